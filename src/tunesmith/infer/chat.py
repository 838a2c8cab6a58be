"""The terminal chat: an interactive loop with history, or one answer per `--prompt`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from tunesmith.infer.engine import Engine

RESET_WORDS = {"/reset", "RESET"}
EXIT_WORDS = {"/exit", "/quit", "EXIT"}
BANNER = "tunesmith chat: /reset clears the history, /exit quits (XTuner's RESET / EXIT work too)"


def answer(engine: Engine, messages: list[dict], sampling: dict, stream: bool, out: TextIO) -> str:
    """Write the answer to `out` (piece by piece when streaming) and return it."""
    if not stream:
        text = engine.generate(messages, **sampling)
        out.write(text)
    else:
        text = ""
        for piece in engine.stream(messages, **sampling):
            text += piece
            out.write(piece)
            out.flush()
    out.write("\n")
    out.flush()
    return text


def answer_prompts(
    engine: Engine, prompts: list[str], sampling: dict, stream: bool, out: TextIO | None = None
) -> list[str]:
    """Each prompt is its own one-turn conversation (for scripts)."""
    out = out or sys.stdout
    return [
        answer(engine, [{"role": "user", "content": p}], sampling, stream, out) for p in prompts
    ]


def interactive(
    engine: Engine,
    sampling: dict,
    stream: bool = True,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
) -> list[dict]:
    """Chat until /exit or end of input; returns the history at the end."""
    out = out or sys.stdout
    out.write(BANNER + "\n")
    history: list[dict] = []
    while True:
        try:
            text = read("\n>>> ").strip()
        except EOFError:
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
        history.append({"role": "user", "content": text})
        reply = answer(engine, history, sampling, stream, out)
        history.append({"role": "assistant", "content": reply})
