"""The terminal chat: an interactive loop with history, or one answer per `--prompt`.

Ctrl-C while an answer is being written stops that answer (generation is cancelled
within a token) and returns to the prompt; at the prompt it ends the chat."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from tunesmith.data.templates import prompt_template, turn_stop_words
from tunesmith.model.generate import (
    Generator,
    Sampling,
    load_model_and_tokenizer,
    lone_surrogate,
)

RESET_WORDS = {"/reset", "RESET"}
EXIT_WORDS = {"/exit", "/quit", "EXIT"}
BANNER = "tunesmith chat: /reset clears the history, /exit quits (XTuner's RESET / EXIT work too)"
STOPPED = " [stopped]"


def load_generator(
    model: str,
    adapter: str | None = None,
    template: str | None = None,
    system: str | None = None,
    bits: int | None = None,
    device: str = "auto",
) -> Generator:
    """MODEL (+ ADAPTER) for chat, the web UI and the server: a named template, or the
    tokenizer's own chat template ending at its end-of-turn marker."""
    net, tokenizer, key = load_model_and_tokenizer(model, adapter, bits=bits, device=device)
    return Generator(
        net,
        tokenizer,
        prompt_template(template, tokenizer),
        system=system,
        name=adapter or model,
        cache_key=key,
        stop_words=turn_stop_words(tokenizer),
    )


def answer(
    generator: Generator, messages: list[dict], sampling: Sampling, stream: bool, out: TextIO
) -> str:
    """Write the answer to `out` (piece by piece when streaming) and return it; Ctrl-C
    stops it there (what was written so far is returned)."""
    text = ""
    try:
        if not stream:
            text = generator.generate(messages, sampling)
            out.write(text)
        else:
            for piece in generator.stream(messages, sampling):
                text += piece
                out.write(piece)
                out.flush()
    except KeyboardInterrupt:  # the stream's cleanup has cancelled the generation
        out.write(STOPPED)
    out.write("\n")
    out.flush()
    return text


def answer_prompts(
    generator: Generator,
    prompts: list[str],
    sampling: Sampling,
    stream: bool,
    out: TextIO | None = None,
) -> list[str]:
    """Each prompt is its own one-turn conversation (for scripts)."""
    out = out or sys.stdout
    return [
        answer(generator, [{"role": "user", "content": p}], sampling, stream, out) for p in prompts
    ]


def interactive(
    generator: Generator,
    sampling: Sampling,
    stream: bool = True,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
) -> list[dict]:
    """Chat until /exit, end of input or Ctrl-C at the prompt; returns the history."""
    out = out or sys.stdout
    out.write(BANNER + "\n")
    history: list[dict] = []
    while True:
        try:
            text = read("\n>>> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return history
        if not text:
            continue
        if text in EXIT_WORDS:
            return history
        if text in RESET_WORDS:
            history = []
            out.write("(history cleared)\n")
            continue
        if lone_surrogate(text):  # bytes that are not UTF-8, e.g. a terminal in Latin-1
            out.write(
                "(that line is not UTF-8 text: set the terminal to UTF-8 and type it again)\n"
            )
            continue
        history.append({"role": "user", "content": text})
        reply = answer(generator, history, sampling, stream, out)
        history.append({"role": "assistant", "content": reply})
