"""Training metrics: one JSON line per logged step in work_dir/metrics.jsonl, plus TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.fileio import atomic_write_text, read_text


class MetricsLogger:
    """Append-only metrics log. On resume, lines after `start_step` are dropped first, so
    the log (and the loss plot) reads as one run."""

    def __init__(self, work_dir: str | Path, start_step: int = 0, tensorboard: bool = True):
        self.path = Path(work_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, start_step)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run wrote after the resumed step
            self._tb = SummaryWriter(
                str(Path(work_dir) / "tensorboard"),
                purge_step=start_step + 1 if start_step else None,
            )

    def log(self, step: int, values: dict[str, float]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The records of metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in read_text(path, "metrics log").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number < len(lines):
            raise UserError(f"{path}:{number}: not a JSON object line; fix or delete it")
    return records


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    # atomic: a kill mid-rewrite leaves the old file whole
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf
    return value
