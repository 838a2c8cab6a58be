"""Checkpoint directories: atomic writes, rotation, finding the newest whole one.

Layout (docs/CONTRACTS.md): `work_dir/iter_N/` holds `adapter/` (LoRA, QLoRA) or
`model/` (full), `optimizer.pt`, `scheduler.pt`, `rng.pt`, `config.yaml` and
`trainer_state.json`. A checkpoint is written into `work_dir/.tmp-iter_N` and
renamed when complete, so a crash mid-save never leaves an `iter_N` that looks whole.
`work_dir/latest` names the newest whole checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import UserError
from tunesmith.fileio import atomic_write_text

STATE_FILE = "trainer_state.json"
_ITER = re.compile(r"^iter_(\d+)$")


def checkpoint_dirs(work_dir: str | Path) -> list[Path]:
    """Whole checkpoints in `work_dir`, oldest first."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    found = []
    for path in work_dir.iterdir():
        match = _ITER.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def find_latest(work_dir: str | Path) -> Path | None:
    """The newest whole checkpoint: the one `latest` names, else the highest step."""
    work_dir = Path(work_dir)
    latest = work_dir / "latest"
    if latest.is_file():
        named = work_dir / latest.read_text().strip()
        if (named / STATE_FILE).is_file():
            return named
    dirs = checkpoint_dirs(work_dir)
    return dirs[-1] if dirs else None


def resolve_resume(resume: str, work_dir: str | Path) -> Path | None:
    """`--resume auto` -> newest whole checkpoint (None when there is none); else a path."""
    if resume == "auto":
        return find_latest(work_dir)
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise UserError(
            f"--resume {resume}: not a whole checkpoint (no {STATE_FILE}); "
            f"pass an iter_N directory or --resume auto"
        )
    return path


def save_atomic(
    work_dir: str | Path, step: int, write: Callable[[Path], None], keep: int = -1
) -> Path:
    """Run `write(tmp_dir)`, then rename tmp_dir to `iter_<step>`, update `latest`, rotate.

    `write` must put `trainer_state.json` in the dir; it is what marks a checkpoint whole.
    `keep` is the number of newest checkpoints kept (-1: all); the one just written
    is always kept, so 0 behaves as 1.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    final = work_dir / f"iter_{step}"
    tmp = work_dir / f".tmp-iter_{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        if not (tmp / STATE_FILE).is_file():
            raise RuntimeError(f"checkpoint writer left no {STATE_FILE} in {tmp}")
        if final.exists():  # e.g. a resumed run saving the same step again
            old = work_dir / f".old-iter_{step}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(work_dir / "latest", final.name + "\n")
    rotate(work_dir, keep if keep < 0 else max(keep, 1))
    return final


def rotate(work_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest checkpoints (-1 keeps all); returns the deleted."""
    if keep < 0:
        return []
    dirs = checkpoint_dirs(work_dir)
    doomed = dirs[: max(0, len(dirs) - keep)]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_state(ckpt: Path) -> dict:
    return json.loads((ckpt / STATE_FILE).read_text())


def rng_state() -> dict:
    """Every RNG the loop draws from (dropout, shuffling), in a weights_only-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_torch(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)
