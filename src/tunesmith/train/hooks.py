"""What runs beside the loop: stop signals, chat samples, the divergence check."""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tunesmith.errors import UserError
from tunesmith.model.generate import Sampling


class TrainingDiverged(UserError):
    """The loss became NaN or inf; the message names the step and what to try."""


def kept(last_checkpoint: Path | None) -> str:
    """What a diverged run leaves to continue from, for its error message."""
    if last_checkpoint:
        return f"the last good checkpoint {last_checkpoint} is kept (continue with --resume auto)"
    return "no checkpoint was saved before it"


def check_finite(loss: float, step: int, last_checkpoint: Path | None) -> None:
    if math.isfinite(loss):
        return
    raise TrainingDiverged(
        f"loss is {loss} at step {step}: training stopped, {kept(last_checkpoint)}; "
        f"try a lower train.lr, check the data (`tunesmith data` can show what is trained on), "
        f"or train in fp32 (train.mixed_precision=no)"
    )


class StopSignals:
    """Turns SIGINT/SIGTERM into a request the loop honours after the current step
    (it saves a checkpoint, then exits). A second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        tqdm.write(
            f"{signal.Signals(signum).name} received: saving a checkpoint after this step "
            f"(send it again to stop at once)"
        )

    @property
    def exit_code(self) -> int:
        """128 + signal number, the shell convention: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.received if self.received else 0


class ChatSampler:
    """Greedy answers to runtime.evaluation_inputs, printed and appended to chat_samples.jsonl.

    All inputs are answered in one batch with the KV cache on (`Generator.answer_batch`),
    also while the model trains with gradient checkpointing. Sampling never touches the
    training RNG streams, so a run with samples follows the same loss curve as one
    without (and resumes exactly).
    """

    def __init__(
        self,
        generator_factory: Callable,
        inputs: list[str],
        max_new_tokens: int,
        out: Path,
        quiet: bool = False,
    ):
        """`quiet`: generate without printing or writing (the other ranks of a sharded run)."""
        self.generator_factory = generator_factory
        self.inputs = inputs
        self.max_new_tokens = max_new_tokens
        self.out = Path(out)
        self.quiet = quiet

    def __call__(self, model: torch.nn.Module, step: int) -> list[dict]:
        if not self.inputs:
            return []
        was_training = model.training
        model.eval()
        records = []
        say = (lambda text: None) if self.quiet else tqdm.write
        say(f"--- chat samples at step {step} ---")
        try:
            with torch.random.fork_rng(devices=_cuda_devices()), torch.no_grad():
                generator = self.generator_factory(model)
                start = time.perf_counter()
                answers = generator.answer_batch(
                    [[{"role": "user", "content": prompt}] for prompt in self.inputs],
                    Sampling.greedy(self.max_new_tokens),
                )
                seconds = time.perf_counter() - start
        finally:
            model.train(was_training)
        tokens = sum(a.completion_tokens for a in answers)
        for prompt, answer in zip(self.inputs, answers, strict=True):
            record = {"step": step, "input": prompt, "output": answer.text}
            record.update(tokens=answer.completion_tokens, batch_seconds=round(seconds, 3))
            records.append(record)
            say(f"user: {prompt}\nassistant: {answer.text}")
        say(f"({tokens} tokens in {seconds:.2f} s, {tokens / max(seconds, 1e-9):.1f} tok/s)")
        if self.quiet:
            return records
        with self.out.open("a") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return records


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def format_summary(summary: dict) -> str:
    """The dataset summary as one line: `records 20 | tokens 1,234 | ...`."""
    parts = []
    for key, value in summary.items():
        shown = (
            f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        )
        parts.append(f"{key.replace('_', ' ')} {shown}")
    return "dataset: " + " | ".join(parts)
