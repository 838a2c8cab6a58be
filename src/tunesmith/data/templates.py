"""Chat templates: a Conversation -> text segments, each marked trainable or not.

Only assistant content and the end-of-turn marker that follows it are trainable,
so the model learns to answer and to stop. The text between turns (role
headers, newlines after the end marker) carries no loss.

Named templates keep XTuner's names. `auto` uses the tokenizer's own
`chat_template`: it renders the conversation one message at a time and takes
the differences between successive renderings as the segments, so it works
for any template that renders conversations as a growing prefix.

`to_jinja(default_system)` gives a HF chat template that renders exactly the
text training saw; export writes it into the tokenizer so every client
(chat, web UI, vLLM, llama.cpp, Ollama) uses the same one.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field

import jinja2

from tunesmith.config.schema import TEMPLATE_NAMES
from tunesmith.data.formats import Conversation, Turn
from tunesmith.errors import UserError


@dataclass(frozen=True)
class Segment:
    text: str
    trainable: bool = False


class ChatTemplate:
    name: str
    stop_words: list[str]

    def render(
        self, conversation: Conversation, default_system: str | None = None
    ) -> list[Segment]:
        raise NotImplementedError

    def render_prompt(self, messages: list[dict], system: str | None = None) -> str:
        """The prompt for generating the next assistant turn (ends with the assistant prefix)."""
        raise NotImplementedError

    def to_jinja(self, default_system: str | None = None) -> str:
        raise NotImplementedError


def _literal(text: str) -> str:
    """A jinja string literal for `text` (jinja unescapes like Python)."""
    return json.dumps(text)


@dataclass(frozen=True)
class WrapperTemplate(ChatTemplate):
    """A template where each role's message is wrapped in a fixed prefix and suffix."""

    name: str
    system: tuple[str, str]  # (prefix, suffix) around the system prompt
    user: tuple[str, str]
    assistant_prefix: str  # opens an assistant turn; render_prompt ends with it
    end_of_turn: str  # closes an assistant turn; trainable (the model must learn to stop)
    separator: str = ""  # text after end_of_turn, not trainable
    bos: str = ""
    trim: bool = False  # the family's template strips message content (Llama 3)
    stop_words: list[str] = field(default_factory=list)

    def _content(self, text: str) -> str:
        return text.strip() if self.trim else text

    def render(
        self, conversation: Conversation, default_system: str | None = None
    ) -> list[Segment]:
        segments = [Segment(self.bos)] if self.bos else []
        turns = conversation.turns
        system = conversation.system or default_system
        if turns and turns[0].role == "system":
            turns = turns[1:]
        if system:
            segments.append(Segment(self.system[0] + self._content(system) + self.system[1]))
        for turn in turns:
            content = self._content(turn.content)
            if turn.role == "user":
                segments.append(Segment(self.user[0] + content + self.user[1]))
            elif turn.role == "assistant":
                segments.append(Segment(self.assistant_prefix))
                segments.append(Segment(content + self.end_of_turn, turn.trainable))
                if self.separator:
                    segments.append(Segment(self.separator))
            else:
                raise UserError(f"{conversation.source}: role {turn.role!r} is not allowed here")
        return segments

    def render_prompt(self, messages: list[dict], system: str | None = None) -> str:
        turns = [Turn(m["role"], m["content"], False) for m in messages]
        text = "".join(s.text for s in self.render(Conversation(turns), default_system=system))
        return text + self.assistant_prefix

    def to_jinja(self, default_system: str | None = None) -> str:
        q = _literal
        parts = []
        if self.bos:
            parts.append("{{- " + q(self.bos) + " }}")
        if default_system:
            parts.append(
                "{%- if not messages or messages[0]['role'] != 'system' %}{{- "
                + q(self.system[0] + self._content(default_system) + self.system[1])
                + " }}{%- endif %}"
            )
        content = "(message['content'] | trim)" if self.trim else "message['content']"
        parts.append(
            "{%- for message in messages %}"
            "{%- if message['role'] == 'system' %}"
            f"{{{{- {q(self.system[0])} + {content} + {q(self.system[1])} }}}}"
            "{%- elif message['role'] == 'user' %}"
            f"{{{{- {q(self.user[0])} + {content} + {q(self.user[1])} }}}}"
            "{%- elif message['role'] == 'assistant' %}"
            f"{{{{- {q(self.assistant_prefix)} + {content} + "
            f"{q(self.end_of_turn + self.separator)} }}}}"
            "{%- endif %}"
            "{%- endfor %}"
            "{%- if add_generation_prompt %}"
            f"{{{{- {q(self.assistant_prefix)} }}}}"
            "{%- endif %}"
        )
        return "".join(parts)


def _chatml(name: str, bos: str = "", stop_words: tuple[str, ...] = ("<|im_end|>",)):
    return WrapperTemplate(
        name=name,
        system=("<|im_start|>system\n", "<|im_end|>\n"),
        user=("<|im_start|>user\n", "<|im_end|>\n"),
        assistant_prefix="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        separator="\n",
        bos=bos,
        stop_words=list(stop_words),
    )


def _llama3() -> WrapperTemplate:
    def header(role: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

    return WrapperTemplate(
        name="llama3_chat",
        system=(header("system"), "<|eot_id|>"),
        user=(header("user"), "<|eot_id|>"),
        assistant_prefix=header("assistant"),
        end_of_turn="<|eot_id|>",
        bos="<|begin_of_text|>",
        trim=True,
        stop_words=["<|eot_id|>", "<|end_of_text|>"],
    )


def _default(eos: str) -> WrapperTemplate:
    # XTuner's `default`: no end-of-turn token of its own, so the tokenizer's EOS ends a turn.
    return WrapperTemplate(
        name="default",
        system=("<|System|>:", "\n"),
        user=("<|User|>:", "\n"),
        assistant_prefix="<|Bot|>:",
        end_of_turn=eos,
        separator="\n",
        stop_words=[eos],
    )


def _zephyr() -> WrapperTemplate:
    return WrapperTemplate(
        name="zephyr",
        system=("<|system|>\n", "</s>\n"),
        user=("<|user|>\n", "</s>\n"),
        assistant_prefix="<|assistant|>\n",
        end_of_turn="</s>",
        separator="\n",
        stop_words=["</s>"],
    )


def _named(name: str, tokenizer) -> WrapperTemplate | None:
    eos = getattr(tokenizer, "eos_token", None) or "</s>"
    return {
        "chatml": lambda: _chatml("chatml"),
        "qwen_chat": lambda: _chatml("qwen_chat", stop_words=("<|im_end|>", "<|endoftext|>")),
        "internlm2_chat": lambda: _chatml("internlm2_chat", bos="<s>"),
        "llama3_chat": _llama3,
        "default": lambda: _default(eos),
        "zephyr": _zephyr,
    }.get(name, lambda: None)()


class AutoTemplate(ChatTemplate):
    """The tokenizer's own chat_template, split into segments by incremental rendering."""

    name = "auto"

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "data.template is auto but the tokenizer has no chat_template; "
                f"set data.template to one of {', '.join(TEMPLATE_NAMES[1:])}"
            )
        self.tokenizer = tokenizer
        self.source = tokenizer.chat_template
        if isinstance(self.source, dict):  # several named templates: training uses the default
            self.source = self.source.get("default") or next(iter(self.source.values()))
        try:
            self._render = _compile(tokenizer, self.source)
        except Exception as exc:  # jinja2.TemplateSyntaxError and friends
            raise UserError(
                f"the tokenizer's chat_template does not parse ({exc}); "
                f"set data.template to one of {', '.join(TEMPLATE_NAMES[1:])}"
            ) from None
        self._skeletons: dict[tuple, list | None] = {}
        probe = self.render(
            Conversation([Turn("user", "x"), Turn("assistant", "y", True)], source="probe")
        )
        answer = [s.text for s in probe if s.trainable][-1]  # "y" + the end-of-turn marker
        end_marker = answer[len("y") :]
        eos = getattr(tokenizer, "eos_token", None)
        self.stop_words = [w for w in dict.fromkeys([end_marker, eos]) if w]

    def render(
        self, conversation: Conversation, default_system: str | None = None
    ) -> list[Segment]:
        messages = conversation.messages()
        trainable = [t.trainable for t in conversation.turns]
        if default_system and conversation.system is None:
            messages.insert(0, {"role": "system", "content": default_system})
            trainable.insert(0, False)
        # Conversations of the same shape render alike: render the shape once with
        # placeholder contents and fill in the real ones (~30x faster than jinja).
        shape = tuple(zip((m["role"] for m in messages), trainable, strict=True))
        skeleton = self._skeletons.get(shape, _UNKNOWN)
        if skeleton is _UNKNOWN:
            skeleton = self._skeletons[shape] = self._make_skeleton(shape)
        if skeleton is None:
            return self._render_slow(messages, trainable, conversation.source)
        contents = [m["content"] for m in messages]
        segments = [Segment(_fill(parts, contents), t) for parts, t in skeleton]
        return [s for s in segments if s.text]

    def _make_skeleton(self, shape) -> list[tuple[list, bool]] | None:
        """The segments of `shape` with contents as slots, or None if contents are not opaque."""
        roles = [role for role, _ in shape]
        trainable = [t for _, t in shape]
        marks = [f"\ue000{i}\ue001" for i in range(len(shape))]
        probe = self._probe(roles, marks, trainable)
        # The template must treat contents as opaque text (no trim, no rewriting).
        check = [f" x{i}\n\n y \n" for i in range(len(shape))]
        expected = self._probe(roles, check, trainable)
        if probe is None or expected is None:
            return None
        skeleton = [(_slots(s.text, marks), s.trainable) for s in probe]
        filled = [Segment(_fill(parts, check), t) for parts, t in skeleton]
        return skeleton if [s for s in filled if s.text] == expected else None

    def _probe(self, roles, contents, trainable) -> list[Segment] | None:
        messages = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]
        try:
            return self._render_slow(messages, trainable, "probe")
        except UserError:
            return None

    def _render_slow(
        self, messages: list[dict], trainable: list[bool], source: str
    ) -> list[Segment]:
        segments: list[Segment] = []
        done = ""  # text rendered so far
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = self._prefix(messages[:k], True, done, source)
            full = self._prefix(messages[: k + 1], False, head, source)
            segments.append(Segment(head[len(done) :]))
            segments.extend(self._answer(full[len(head) :], message["content"], trainable[k]))
            done = full
        rest = self._prefix(messages, False, done, source)
        if len(rest) > len(done):
            segments.append(Segment(rest[len(done) :]))
        return [s for s in segments if s.text]

    def _prefix(self, messages, generation: bool, expected: str, source: str) -> str:
        try:
            text = self._render(messages, generation)
        except Exception as exc:  # the template's own raise_exception(), or a jinja error
            raise UserError(
                f"{source}: the tokenizer's chat template refused this conversation ({exc}); "
                f"fix the record or set data.template to one of {', '.join(TEMPLATE_NAMES[1:])}"
            ) from None
        if not text.startswith(expected):
            raise UserError(
                f"{source}: the tokenizer's chat template does not render this "
                "conversation as a growing prefix, so its turns cannot be masked; set "
                f"data.template to one of {', '.join(TEMPLATE_NAMES[1:])}"
            )
        return text

    def _answer(self, text: str, content: str, trainable: bool) -> list[Segment]:
        """Split an assistant turn's rendering into content + end marker (trainable) and the rest."""
        start = text.find(content) if content else 0
        if start < 0:
            content = content.strip()
            start = text.find(content)
        if start < 0:
            raise UserError(
                "the tokenizer's chat template rewrites assistant content; use a named template"
            )
        tail = text[start + len(content) :]
        end = tail.rstrip()
        segments = [Segment(text[:start]), Segment(content + end, trainable)]
        if not end and self.tokenizer.eos_token:  # the template has no end marker: add EOS
            segments[-1] = Segment(content + self.tokenizer.eos_token, trainable)
        segments.append(Segment(tail[len(end) :]))
        return segments

    def render_prompt(self, messages: list[dict], system: str | None = None) -> str:
        messages = list(messages)
        if system and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": system})
        return self._render(messages, True)

    def to_jinja(self, default_system: str | None = None) -> str:
        if not default_system:
            return self.source
        prelude = (
            "{%- if not messages or messages[0]['role'] != 'system' %}"
            "{%- set messages = [{'role': 'system', 'content': "
            + _literal(default_system)
            + "}] + messages %}{%- endif %}"
        )
        return prelude + self.source


_UNKNOWN = object()


def _slots(text: str, marks: list[str]) -> list[str | int]:
    """Split `text` into literal pieces and content slot numbers."""
    parts: list[str | int] = [text]
    for i, mark in enumerate(marks):
        out: list[str | int] = []
        for part in parts:
            if isinstance(part, str) and mark in part:
                pieces = part.split(mark)
                for j, piece in enumerate(pieces):
                    if j:
                        out.append(i)
                    out.append(piece)
            else:
                out.append(part)
        parts = out
    return [p for p in parts if p != ""]


def _fill(parts: list[str | int], contents: list[str]) -> str:
    return "".join(contents[p] if isinstance(p, int) else p for p in parts)


def _compile(tokenizer, source: str):
    """render(messages, add_generation_prompt) for the chat template `source`, through
    transformers' public rendering (it caches the compiled template). Raises jinja2's
    TemplateSyntaxError where `source` does not parse."""

    def render(messages, gen):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=gen, chat_template=source
        )

    try:
        render([{"role": "user", "content": "x"}], True)
    except jinja2.TemplateSyntaxError:
        raise
    except Exception:  # the template refuses this probe: the real conversations will say why
        pass
    return render


def get_template(name: str, tokenizer=None) -> ChatTemplate:
    """A template by XTuner name, or `auto` for the tokenizer's own chat_template."""
    if name == "auto":
        if tokenizer is None:
            raise UserError("template auto needs the model's tokenizer")
        return AutoTemplate(tokenizer)
    check_template_name(name)
    return _named(name, tokenizer)


def check_template_name(name: str) -> None:
    """A UserError naming data.template when `name` is neither `auto` nor a known template."""
    if name == "auto" or name in TEMPLATE_NAMES:
        return
    close = difflib.get_close_matches(name, TEMPLATE_NAMES, n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise UserError(
        f"data.template: unknown template '{name}'; {hint}use auto (the tokenizer's own) or one "
        f"of {', '.join(TEMPLATE_NAMES)}"
    )


def turn_stop_words(tokenizer) -> list[str]:
    """The end-of-turn marker(s) of the tokenizer's own chat template, where it can be probed
    ([] for a template that cannot be; prompting with it still works)."""
    try:
        return list(get_template("auto", tokenizer).stop_words)
    except UserError:
        return []


def prompt_template(name: str | None, tokenizer) -> ChatTemplate | None:
    """The template generation renders prompts with: a named one, or None for the tokenizer's
    own chat_template (rendered by the tokenizer; see `turn_stop_words` for its stops)."""
    return get_template(name, tokenizer) if name and name != "auto" else None
