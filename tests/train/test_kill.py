"""Kill tests: `kill -9` a real `tunesmith train` at random moments, saves included, and resume.

Every resume must start from a whole checkpoint, and the losses of the finished run must equal
an uninterrupted run's with the same seed. Ten kills, each one process start (~5-15 s).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from train_cli_helpers import write_cli_config

from tunesmith.train import checkpoint as ckpt
from tunesmith.train.metrics import read_metrics

PAIRS = [(f"Question {i}?", f"Answer number {i}.") for i in range(8)]
STEPS = 24  # ten kills advance 1-4 steps each (a whole 12-step run ended after 7 kills on CI)


@pytest.fixture
def config_file(tmp_path, tiny_model_dir):
    train = {"lr": 1e-2, "max_steps": STEPS, "warmup_ratio": 0.1, "accumulative_counts": 2}
    # a save every step, two kept: most moments fall in or near a save or a rotation
    runtime = {"save_steps": 1, "save_total_limit": 2}
    # dropout: the RNG must resume too
    return write_cli_config(tmp_path, tiny_model_dir, PAIRS, train, runtime, dropout=0.1)


def _start(config, work_dir, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tunesmith.cli.main", "train", str(config)]
    cmd += ["--work-dir", str(work_dir)] + (["--resume", "auto"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("NPROC_PER_NODE", "NNODES"):
        env.pop(key, None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _assert_whole(path) -> None:
    """Everything a resume reads is there and loads."""
    state = ckpt.read_state(path)
    assert len(state["losses"]) == state["step"]
    load_file(str(path / "adapter" / "adapter_model.safetensors"))
    torch.load(path / "scheduler.pt", weights_only=True)
    torch.load(path / "state" / "optimizer.bin", weights_only=True)
    assert (path / "state" / "random_states_0.pkl").is_file()
    assert (path / "config.yaml").is_file()


def _kill_at(proc: subprocess.Popen, work_dir, moment: str, rng: random.Random) -> str:
    """SIGKILL `proc` at `moment`: "save" (a .tmp-iter_N dir exists: mid-save), "step" (just
    after a metrics line, plus up to 0.2 s) or "any" (a random delay once training runs)."""
    metrics = work_dir / "metrics.jsonl"
    seen = len(read_metrics(metrics))
    deadline = time.monotonic() + 120
    delay = rng.uniform(0, 0.2)
    while proc.poll() is None and time.monotonic() < deadline:
        if moment == "save" and list(work_dir.glob(".tmp-iter_*/*")):
            break
        if moment in ("step", "any") and len(read_metrics(metrics)) > seen:
            time.sleep(delay if moment == "step" else rng.uniform(0, 0.6))
            break
        time.sleep(0.002)
    if proc.poll() is not None:
        return "finished"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return moment


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_follows_the_uninterrupted_curve(
    config_file, tmp_path
):
    ref = _start(config_file, tmp_path / "ref", resume=False)
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-2000:]
    reference = ckpt.read_state(ckpt.find_latest(tmp_path / "ref"))["losses"]

    work = tmp_path / "run"
    rng = random.Random(0)
    moments = ["save", "step", "any", "save", "step", "save", "any", "step", "save", "any"]
    kills, resumed_from = [], []
    for moment in moments:
        proc = _start(config_file, work, resume=True)
        outcome = _kill_at(proc, work, moment, rng)
        if outcome == "finished":
            break
        kills.append(outcome)
        latest = ckpt.find_latest(work)
        if latest is not None:
            _assert_whole(latest)
            resumed_from.append(ckpt.read_state(latest)["step"])
    final = _start(config_file, work, resume=True)
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()[-2000:]

    assert len(kills) >= 8, kills  # the run outlived most kill points
    assert "save" in kills
    assert resumed_from == sorted(resumed_from)  # never went back to an older checkpoint
    losses = ckpt.read_state(ckpt.find_latest(work))["losses"]
    assert losses == pytest.approx(reference, abs=1e-5)
    steps = [r["step"] for r in read_metrics(work / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1))  # one line per step, torn ones dropped
    assert not list(work.glob(".tmp-iter_*"))
    assert [p.name for p in ckpt.checkpoint_dirs(work)] == [f"iter_{STEPS - 1}", f"iter_{STEPS}"]
