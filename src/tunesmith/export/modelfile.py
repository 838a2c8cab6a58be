"""An Ollama Modelfile for an exported GGUF: FROM, SYSTEM, TEMPLATE, PARAMETER stop.

Ollama does not run a GGUF's jinja chat template: it recognises templates it knows and falls
back to a bare prompt otherwise. A tunesmith export's template carries the default system prompt
of its training, so it matches none of them: the Modelfile always spells the template out, as
the Go template Ollama renders. The text around each role's content is read off the model's own
jinja template by rendering probe conversations, then checked against that template on
multi-turn conversations, with and without a system message, before anything is written.

Ollama puts the Modelfile's SYSTEM first in `.Messages` when a request has no system message,
which is what the jinja template's default system prompt does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tunesmith.errors import UserError

_S, _U, _U2, _A = "\ue000sys\ue001", "\ue000usr\ue001", "\ue000usr2\ue001", "\ue000ans\ue001"


@dataclass(frozen=True)
class Wrappers:
    """The literal text around each role's content in a chat template."""

    bos: str
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]  # (prefix, end of turn + what follows it)
    default_system: str | None

    def render(self, messages: list[dict]) -> str:
        """The prompt for the next assistant turn, as the template renders it."""
        if self.default_system and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        parts = [self.bos]
        for m in messages:
            prefix, suffix = getattr(self, m["role"])
            parts.append(prefix + m["content"] + suffix)
        return "".join(parts) + self.assistant[0]


def read_wrappers(tokenizer) -> Wrappers:
    """The wrappers of the tokenizer's chat template, checked to reproduce it.

    Raises:
        UserError: the template is not role-wise text around each message (it cannot be an
            Ollama TEMPLATE); name the reason.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the tokenizer has no chat_template: no Ollama TEMPLATE can be written")

    def render(messages, generation=False) -> str:
        msgs = [{"role": r, "content": c} for r, c in messages]
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation)

    def between(text: str, *marks: str) -> list[str]:
        pieces, rest = [], text
        for mark in marks:
            if mark not in rest:
                raise _NotWrapped(f"it does not render the content {mark!r} verbatim")
            head, rest = rest.split(mark, 1)
            pieces.append(head)
        return [*pieces, rest]

    try:
        sys_user = [("system", _S), ("user", _U)]
        p0, p1, p2 = between(render(sys_user, True), _S, _U)[0:3]
        user_suffix = between(render(sys_user), _S, _U)[2]
        if not p2.startswith(user_suffix):
            raise _NotWrapped("the generation prompt does not follow the user turn")
        assistant_prefix = p2[len(user_suffix) :]
        answered = render([*sys_user, ("assistant", _A), ("user", _U2)])
        after_answer = between(answered, _S, _U, _A, _U2)[3]
        end = between(render([*sys_user, ("assistant", _A)]), _S, _U, _A)[3]
        if not after_answer.startswith(end):
            raise _NotWrapped("the text after an answer changes with what follows")
        user_prefix = after_answer[len(end) :]
        if not p1.endswith(user_prefix):
            raise _NotWrapped("a user turn opens differently after a system message")
        bos = tokenizer.bos_token or ""  # unless it is the token that opens every turn
        bos = bos if bos and p0.startswith(bos) and not user_prefix.startswith(bos) else ""
        system = (p0[len(bos) :], p1[: len(p1) - len(user_prefix)])
        alone = render([("user", _U)])
        default = None
        if not alone.startswith(bos + user_prefix + _U):
            head = bos + system[0]
            tail = system[1] + user_prefix + _U
            if not (alone.startswith(head) and tail in alone):
                raise _NotWrapped("a conversation without a system message renders apart")
            default = alone[len(head) : alone.index(tail)]
        wrappers = Wrappers(
            bos, system, (user_prefix, user_suffix), (assistant_prefix, end), default
        )
        _check(wrappers, render)
    except _NotWrapped as why:
        raise UserError(
            f"the chat template cannot be written as an Ollama TEMPLATE ({why}); export with "
            "--no-modelfile and write the Modelfile by hand"
        ) from None
    return wrappers


class _NotWrapped(Exception):
    pass


def _check(wrappers: Wrappers, render) -> None:
    conversations = [
        [("user", "Hi")],
        [("system", "Be brief."), ("user", "Hi")],
        [("user", "Who are you?"), ("assistant", "Tuney."), ("user", "Sure?")],
        [("system", "S"), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"),
         ("user", "e")],
    ]  # fmt: skip
    for conversation in conversations:
        messages = [{"role": r, "content": c} for r, c in conversation]
        if wrappers.render(messages) != render(conversation, True):
            raise _NotWrapped(f"the pieces read off it do not reproduce {conversation}")


def go_template(wrappers: Wrappers, runtime_adds_bos: bool) -> str:
    """The Ollama (Go text/template) TEMPLATE rendering what the wrappers render.

    Every literal is a quoted Go string, so `{{-` trimming never eats template text.
    """
    q = _go_string

    def wrapped(prefix: str, suffix: str) -> str:
        return "".join(
            part
            for part in (q(prefix), "{{ .Content }}", q(suffix))
            if part  # an empty literal is left out
        )

    bos = "" if runtime_adds_bos else q(wrappers.bos)
    return (
        f"{bos}{{{{- range .Messages }}}}\n"
        f'{{{{- if eq .Role "system" }}}}{wrapped(*wrappers.system)}\n'
        f'{{{{- else if eq .Role "user" }}}}{wrapped(*wrappers.user)}\n'
        f'{{{{- else if eq .Role "assistant" }}}}{wrapped(*wrappers.assistant)}\n'
        "{{- end }}\n"
        f"{{{{- end }}}}{q(wrappers.assistant[0])}"
    )


def _go_string(text: str) -> str:
    """`text` as a Go template string constant action ("" for empty text)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def modelfile_text(tokenizer, gguf_name: str) -> str:
    """The Modelfile for the GGUF file `gguf_name` (beside it) of a model with `tokenizer`."""
    from tunesmith.data.templates import get_template

    wrappers = read_wrappers(tokenizer)
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
    stops = get_template("auto", tokenizer).stop_words
    lines = [f"FROM ./{gguf_name}", ""]
    if wrappers.default_system:
        if '"""' in wrappers.default_system:
            raise UserError('the default system prompt holds """, which a Modelfile cannot quote')
        lines += [f'SYSTEM """{wrappers.default_system}"""', ""]
    lines += [f'TEMPLATE """{go_template(wrappers, adds_bos)}"""', ""]
    lines += [f"PARAMETER stop {json.dumps(word, ensure_ascii=False)}" for word in stops]
    return "\n".join(lines) + "\n"
