"""The one generation engine behind chat, the web UI, the API server and the eval.

It renders chat messages with the model's own chat template (or a named
tunesmith template), generates with `model.generate` in a background thread and
streams the text through transformers' `TextIteratorStreamer`. Stop words end
the answer and are never shown.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from tunesmith.errors import UserError

DEFAULT_SAMPLING = {
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 40,
    "repetition_penalty": 1.0,
    "max_new_tokens": 512,
    "seed": None,
}


@dataclass
class GenerationStats:
    """Filled in by `Engine.stream` once an answer is complete."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length"
    text: str = ""


@dataclass
class _Sampling:
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    max_new_tokens: int
    seed: int | None
    stop: list[str] = field(default_factory=list)

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> _Sampling:
        unknown = set(kwargs) - set(DEFAULT_SAMPLING) - {"stop"}
        if unknown:
            raise TypeError(f"unknown sampling arguments: {sorted(unknown)}")
        values = {**DEFAULT_SAMPLING, **{k: v for k, v in kwargs.items() if v is not None}}
        values["stop"] = list(values.get("stop") or [])
        if values["max_new_tokens"] < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {values['max_new_tokens']}")
        if values["temperature"] < 0:
            raise UserError(f"temperature must be >= 0, got {values['temperature']}")
        return cls(**values)


def check_sampling(sampling: dict) -> None:
    """Raise UserError for sampling values that generation would reject."""
    _Sampling.from_kwargs(sampling)


class _Cancelled(StoppingCriteria):
    """Stops generation when the consumer of the stream goes away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        flag = self.event.is_set()
        return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)


class Engine:
    """A chat model plus tokenizer that turns messages into (streamed) answers."""

    def __init__(self, model, tokenizer, template: str | None = None, system: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.system = system
        self.template = None
        if template and template != "auto":
            from tunesmith.data.templates import get_template

            self.template = get_template(template, tokenizer)
        elif not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "the tokenizer has no chat_template: pass a named template "
                "(--prompt-template, e.g. chatml or internlm2_chat)"
            )
        self.stop_words = (
            list(self.template.stop_words) if self.template else _auto_stops(tokenizer)
        )
        self.eos_token_ids = self._eos_token_ids()
        # One generation at a time: the model is shared by every caller.
        self._lock = threading.Lock()
        self.model.eval()

    @classmethod
    def load(
        cls,
        model: str,
        adapter: str | None = None,
        template: str | None = None,
        system: str | None = None,
        bits: int | None = None,
        device: str = "auto",
    ) -> Engine:
        """Load a model (alias, directory, cached hub id) and optionally a PEFT adapter on top.

        The tokenizer comes from the adapter directory when it has one (it carries the
        chat template used in training), else from the model.
        """
        from tunesmith.infer.loading import load_for_inference

        loaded_model, tokenizer = load_for_inference(model, adapter, bits=bits, device=device)
        return cls(loaded_model, tokenizer, template=template, system=system)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt(self, messages: list[dict]) -> str:
        """The text the model sees: the conversation plus the assistant prefix."""
        has_system = any(m.get("role") == "system" for m in messages)
        if self.template is not None:
            return self.template.render_prompt(messages, system=None if has_system else self.system)
        if self.system and not has_system:
            messages = [{"role": "system", "content": self.system}, *messages]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, messages: list[dict], **sampling) -> str:
        return "".join(self.stream(messages, **sampling))

    def stream(
        self, messages: list[dict], stats: GenerationStats | None = None, **sampling
    ) -> Iterator[str]:
        """Yield the answer piece by piece; `stats` (if given) is filled in at the end."""
        params = _Sampling.from_kwargs(sampling)
        stats = stats if stats is not None else GenerationStats()
        prompt = self.prompt(messages)
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        stats.prompt_tokens = int(inputs["input_ids"].shape[1])
        stop_words = [*self.stop_words, *params.stop]

        with self._lock:
            streamer = TextIteratorStreamer(
                self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=None
            )
            cancel = threading.Event()
            result: dict = {}
            kwargs = self._generate_kwargs(inputs, params, streamer, cancel, stop_words)
            if params.seed is not None:
                torch.manual_seed(params.seed)

            def run() -> None:
                try:
                    with torch.inference_mode():
                        result["ids"] = self.model.generate(**kwargs)
                except BaseException as exc:  # surfaced in the consumer's thread below
                    result["error"] = exc
                    streamer.end()

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            text = ""
            try:
                for piece in _cut_at_stop_words(streamer, stop_words):
                    text += piece
                    yield piece
            finally:
                cancel.set()
                thread.join()
            if "error" in result:
                raise result["error"]
            new_ids = result["ids"][0, stats.prompt_tokens :]
            stats.completion_tokens = int(new_ids.shape[0])
            stats.text = text
            ended_on_eos = bool(new_ids.numel()) and int(new_ids[-1]) in self.eos_token_ids
            stopped = ended_on_eos or any(w in self.tokenizer.decode(new_ids) for w in stop_words)
            hit_limit = stats.completion_tokens >= params.max_new_tokens
            stats.finish_reason = "length" if hit_limit and not stopped else "stop"

    def _generate_kwargs(self, inputs, params: _Sampling, streamer, cancel, stop_words) -> dict:
        kwargs = dict(
            **inputs,
            streamer=streamer,
            max_new_tokens=params.max_new_tokens,
            repetition_penalty=params.repetition_penalty,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.eos_token_ids[0],
            stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
        )
        if params.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
            )
        # EOS ids already stop generation; every other stop word stops it through stop_strings.
        others = [w for w in stop_words if self._single_token_id(w) not in self.eos_token_ids]
        if others:
            kwargs.update(stop_strings=others, tokenizer=self.tokenizer)
        return kwargs

    def _single_token_id(self, word: str) -> int | None:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    def _eos_token_ids(self) -> list[int]:
        """The tokenizer's EOS, the generation config's EOS list, and one-token stop words."""
        ids: list[int] = []
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (self.tokenizer.eos_token_id, gen_eos):
            if value is None:
                continue
            ids.extend(value if isinstance(value, list) else [value])
        for word in self.stop_words:
            token_id = self._single_token_id(word)
            if token_id is not None:
                ids.append(token_id)
        ids = list(dict.fromkeys(int(i) for i in ids))
        if not ids:
            raise UserError("the tokenizer defines no eos_token: set one in tokenizer_config.json")
        return ids


def _auto_stops(tokenizer) -> list[str]:
    """The end-of-turn marker of the tokenizer's own chat template, where it can be found."""
    from tunesmith.data.templates import get_template

    try:
        return list(get_template("auto", tokenizer).stop_words)
    except UserError:  # a template that cannot be probed still works for prompting
        return []


def _cut_at_stop_words(pieces: Iterator[str], stop_words: list[str]) -> Iterator[str]:
    """Pass text through, holding back what could be the start of a stop word; end at one."""
    pending = ""
    for piece in pieces:
        pending += piece
        hits = [i for i in (pending.find(w) for w in stop_words) if i >= 0]
        if hits:
            if pending[: min(hits)]:
                yield pending[: min(hits)]
            return
        hold = max((_partial_stop_len(pending, w) for w in stop_words), default=0)
        if len(pending) > hold:
            yield pending[: len(pending) - hold]
            pending = pending[len(pending) - hold :]
    if pending:
        yield pending


def _partial_stop_len(text: str, word: str) -> int:
    """Length of the longest end of `text` that is a proper start of `word`."""
    for k in range(min(len(word) - 1, len(text)), 0, -1):
        if text.endswith(word[:k]):
            return k
    return 0
