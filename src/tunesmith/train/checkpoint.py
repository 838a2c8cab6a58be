"""Checkpoint directories: atomic writes every rank takes part in, rotation, resume checks.

Layout (docs/CONTRACTS.md): `work_dir/iter_N/` holds `adapter/` (LoRA, QLoRA: a PEFT adapter
of whole tensors) or `model/` (full: an HF model dir), `state/` (accelerate's `save_state`:
the optimizer, scaler and RNG state of every rank, and under DeepSpeed / FSDP2 the engine's own
shards), `scheduler.pt`, `config.yaml` and `trainer_state.json`. Every rank writes into
`work_dir/.tmp-iter_N`; once all are done, rank 0 writes `trainer_state.json` (its presence
marks a checkpoint whole) and renames the dir. `work_dir/latest` names the newest whole one.
Deleting a checkpoint first removes `trainer_state.json`, so a kill mid-delete never leaves a
half-deleted dir that looks whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from tunesmith.errors import UserError
from tunesmith.fileio import atomic_write_text

STATE_FILE = "trainer_state.json"
_ITER = re.compile(r"^iter_(\d+)$")

# Settings whose change makes a checkpoint's weights or optimizer state unloadable: a change is
# refused on resume. Every other change (lr, max_steps, save_steps, ...) is reported and accepted.
INCOMPATIBLE = (
    "model.path",
    "model.special_tokens",  # the vocabulary, so the embedding and head shapes
    "lora",  # LoRA <-> full fine-tuning
    "lora.r",
    "lora.target_modules",
    "lora.use_dora",
    "lora.bias",
    "quantization",  # QLoRA <-> LoRA
    "quantization.bits",
)


def step_of(path: Path) -> int:
    match = _ITER.match(path.name)
    return int(match.group(1)) if match else -1


def is_whole(path: Path) -> bool:
    return _ITER.match(path.name) is not None and (path / STATE_FILE).is_file()


def checkpoint_dirs(work_dir: str | Path) -> list[Path]:
    """Whole checkpoints in `work_dir`, oldest first."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    return sorted((p for p in work_dir.iterdir() if p.is_dir() and is_whole(p)), key=step_of)


def find_latest(work_dir: str | Path) -> Path | None:
    """The newest whole checkpoint: the one `latest` names, else the highest step."""
    work_dir = Path(work_dir)
    latest = work_dir / "latest"
    try:
        name = latest.read_text(encoding="utf-8").strip() if latest.is_file() else ""
    except (OSError, UnicodeDecodeError):
        name = ""  # a damaged pointer: the highest whole checkpoint below is the newest
    if _ITER.match(name) and is_whole(work_dir / name):  # a plain iter_N, never a path
        return work_dir / name
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


# ---- writing: begin (rank 0) -> every rank writes -> commit (rank 0) ---------------------------


def tmp_dir(work_dir: str | Path, step: int) -> Path:
    return Path(work_dir) / f".tmp-iter_{step}"


def begin(work_dir: str | Path, step: int) -> Path:
    """An empty `.tmp-iter_<step>` for the ranks to write into (rank 0 calls it, then a barrier)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir(work_dir, step)
    if tmp.exists():  # left by a run killed mid-save
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit(work_dir: str | Path, step: int, state: dict, keep: int = -1) -> Path:
    """Mark `.tmp-iter_<step>` whole (trainer_state.json, last), rename it to `iter_<step>`,
    point `latest` at it and rotate; returns the checkpoint. Rank 0 only, after a barrier."""
    work_dir = Path(work_dir)
    tmp, final = tmp_dir(work_dir, step), work_dir / f"iter_{step}"
    write_json(tmp / STATE_FILE, state)
    if final.exists():  # e.g. a resumed run saving the same step again
        delete(final)
    os.replace(tmp, final)
    atomic_write_text(work_dir / "latest", final.name + "\n")
    rotate(work_dir, keep, protect=final)
    return final


def save_atomic(
    work_dir: str | Path, step: int, write: Callable[[Path], dict], keep: int = -1
) -> Path:
    """One process: `state = write(tmp_dir)`, then `commit`. A failing `write` leaves no trace."""
    tmp = begin(work_dir, step)
    try:
        state = write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit(work_dir, step, state, keep)


def delete(path: Path) -> None:
    """Remove a checkpoint, first what marks it whole."""
    (path / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(path)


def rotate(work_dir: str | Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the `keep` newest whole checkpoints (-1 keeps all, 0 counts as 1);
    `protect` (the one just written) is never deleted. Returns the deleted."""
    if keep < 0:
        return []
    dirs = checkpoint_dirs(work_dir)
    kept = set(dirs[-max(keep, 1) :])
    if protect is not None:
        kept.add(Path(protect))
    doomed = [p for p in dirs if p not in kept]
    for path in doomed:
        delete(path)
    return doomed


def move_aside_newer(work_dir: str | Path, resumed: Path) -> Path | None:
    """Before resuming an older checkpoint: move the whole checkpoints newer than it out of the
    way (so rotation and `latest` never mix two histories). Returns the folder they went to."""
    work_dir = Path(work_dir)
    newer = [p for p in checkpoint_dirs(work_dir) if step_of(p) > step_of(resumed)]
    if not newer:
        return None
    aside = work_dir / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir()
    for path in newer:
        os.replace(path, aside / path.name)
    atomic_write_text(work_dir / "latest", resumed.name + "\n")
    return aside


def clean_stale_tmp(work_dir: str | Path) -> None:
    """Remove `.tmp-iter_*` dirs that killed saves left behind."""
    work_dir = Path(work_dir)
    if work_dir.is_dir():
        for path in work_dir.glob(".tmp-iter_*"):
            shutil.rmtree(path, ignore_errors=True)


# ---- resume checks -----------------------------------------------------------------------------


def resume_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(refused, accepted): one 'key: old -> new' line per changed setting of the resolved
    configs (as loaded from config.yaml). Refused ones make the checkpoint unloadable."""
    old, new = _flatten(saved), _flatten(current)
    refused, accepted = [], []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key) or key == "runtime.work_dir":
            continue
        line = f"{key}: {_show(old.get(key))} -> {_show(new.get(key))}"
        top = key.split(".")[0]
        blocking = key in INCOMPATIBLE or (
            top in INCOMPATIBLE and (key not in old or key not in new)
        )
        (refused if blocking else accepted).append(line)
    return refused, accepted


def check_engine(state: dict, engine: str | None, world_size: int, ckpt: Path) -> None:
    """Each engine writes its own optimizer-state layout, and a ZeRO / FSDP2 checkpoint holds
    one shard per process: a resume under another engine, or a sharded one on another number
    of processes, is refused (exit 2). Plain and DDP checkpoints resume on any number."""
    if not (ckpt / "state").is_dir():
        raise UserError(
            f"{ckpt} has no state/ folder (written by an older tunesmith): it cannot be resumed; "
            f"export its weights with `tunesmith convert pth_to_hf` or start a new run"
        )
    saved_engine = state.get("engine")
    if saved_engine != engine:
        raise UserError(
            f"{ckpt} was saved under {saved_engine or 'no engine (single process / DDP)'}, this "
            f"run uses {engine or 'none (single process / DDP)'}: their optimizer states differ; "
            f"resume with --deepspeed {saved_engine or 'unset'}, or start a new run"
        )
    check_world_size(state, world_size, ckpt)


def check_world_size(state: dict, world_size: int, ckpt: Path) -> None:
    """A ZeRO / FSDP2 checkpoint resumes only on the number of processes that wrote it (its
    optimizer state is sharded per process). Also checked by the launcher before it starts
    any process, so the refusal is one line, not one per worker."""
    engine, saved_world = state.get("engine"), state.get("world_size", 1)
    if engine and saved_world != world_size:
        raise UserError(
            f"{ckpt} was saved by {saved_world} processes under {engine}, this run has "
            f"{world_size}: its optimizer state is sharded per process; resume with "
            f"{saved_world} processes (NPROC_PER_NODE={saved_world}), or start a new run"
        )


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in (data or {}).items():
        if isinstance(value, dict):
            flat[f"{prefix}{key}"] = "set"
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _show(value) -> str:
    return "null" if value is None else str(value)


# ---- small files -------------------------------------------------------------------------------


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """A checkpoint file or dir that cannot be loaded (emptied, truncated, overwritten by
    hand) becomes one UserError naming it, instead of the loader's traceback."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # each loader (json, yaml, torch, safetensors, accelerate) its own
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        first = first if len(first) <= 120 else first[:117] + "..."
        raise UserError(
            f"{path}: damaged, this checkpoint cannot be loaded ({type(exc).__name__}"
            f"{': ' + first if first else ''}); resume from another one (--resume "
            "WORK_DIR/iter_N) or start over without --resume"
        ) from exc


def read_state(ckpt: Path) -> dict:
    path = ckpt / STATE_FILE
    with reading(path):
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no integer 'step'")
    return state


def read_config(ckpt: Path) -> dict:
    path = ckpt / "config.yaml"
    if not path.is_file():
        return {}
    with reading(path):
        config = yaml.safe_load(path.read_text()) or {}
        if not isinstance(config, dict):
            raise ValueError("not a mapping")
    return config


def load_torch(path: Path):
    with reading(path):
        return torch.load(path, map_location="cpu", weights_only=True)
