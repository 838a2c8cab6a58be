"""Several processes on a CPU (gloo): the launcher, signals, resume, the watchdog.

Each test starts real `tunesmith train` processes (about 10-40 s each on a 2-core box), so the
ones that launch two ranks are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from train_cli_helpers import write_cli_config

from tunesmith.train import checkpoint as ckpt
from tunesmith.train.metrics import read_metrics

PAIRS = [(f"Question {i}?", f"Answer number {i}.") for i in range(16)]


@pytest.fixture
def config_file(tmp_path, tiny_model_dir):
    train = {"lr": 1e-2, "max_steps": 8, "warmup_ratio": 0.0}
    runtime = {"save_steps": 2, "save_total_limit": 2}
    return write_cli_config(tmp_path, tiny_model_dir, PAIRS, train, runtime)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "NNODES", "PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _train(config, work_dir, *args, **env) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "tunesmith.cli.main",
        "train",
        str(config),
        "--work-dir",
        str(work_dir),
    ]
    return subprocess.Popen(
        [*cmd, *args], env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _losses(work_dir: Path) -> list[float]:
    return ckpt.read_state(ckpt.find_latest(work_dir))["losses"]


@pytest.mark.slow
def test_two_ranks_stopped_by_sigterm_save_and_resume_the_uninterrupted_curve(
    config_file, tmp_path
):
    # reference: two "nodes" of one process each on this host, as XTuner users launch them
    port = _free_port()
    nodes = [
        _train(
            config_file,
            tmp_path / "ref",
            NNODES="2",
            NODE_RANK=str(r),
            ADDR="127.0.0.1",
            PORT=str(port),
        )
        for r in (0, 1)
    ]
    outs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs[0][-3000:]
    reference = _losses(tmp_path / "ref")
    assert len(reference) == 8

    # NPROC_PER_NODE=2 with port 29500 held by someone else: the launcher picks a free port
    with socket.socket() as blocker:
        try:
            blocker.bind(("127.0.0.1", 29500))
        except OSError:
            pass  # already taken, which is the point
        run = _train(config_file, tmp_path / "run", NPROC_PER_NODE="2")
        workers = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
            if steps and steps[-1] >= 2:
                launcher = psutil.Process(run.pid)
                workers = [p for p in launcher.children(recursive=True)]
                run.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
        out = run.communicate(timeout=120)[0]
    assert run.returncode == 143, out[-3000:]
    assert len(workers) >= 3  # torchrun and its two workers
    time.sleep(0.5)
    assert not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    saved = ckpt.find_latest(tmp_path / "run")
    stopped_at = ckpt.read_state(saved)["step"]
    assert 2 <= stopped_at < 8
    assert (saved / "state" / "random_states_1.pkl").is_file()  # every rank's RNG

    resumed = _train(config_file, tmp_path / "run", "--resume", "auto", NPROC_PER_NODE="2")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert f"resumed from {saved} at step {stopped_at}/8" in out
    assert _losses(tmp_path / "run") == pytest.approx(reference, abs=1e-5)


@pytest.mark.slow
def test_a_worker_that_dies_takes_the_others_down(config_file, tmp_path):
    run = _train(config_file, tmp_path / "run", "train.max_steps=400", NPROC_PER_NODE="2")
    deadline = time.monotonic() + 240
    workers = []
    while time.monotonic() < deadline and run.poll() is None:
        if read_metrics(tmp_path / "run" / "metrics.jsonl"):
            torchrun = psutil.Process(run.pid).children()[0]
            workers = torchrun.children()
            workers[-1].kill()  # SIGKILL one rank mid-training
            break
        time.sleep(0.05)
    assert len(workers) == 2
    out = run.communicate(timeout=120)[0]
    assert run.returncode not in (0, None), out[-2000:]
    time.sleep(0.5)
    assert not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _stop_at(run: subprocess.Popen, work_dir: Path, step: int) -> str:
    """SIGTERM to the launcher once `step` is logged; its output."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run.poll() is None:
        steps = [r["step"] for r in read_metrics(work_dir / "metrics.jsonl")]
        if steps and steps[-1] >= step:
            run.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    return run.communicate(timeout=120)[0]


def _lora_parameter_count(model_dir: Path) -> str:
    """ "trainable X of Y" as one process counts it on the whole model: peft's own count."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    trainable, total = get_peft_model(model, lora).get_nb_trainable_parameters()
    return f"trainable {trainable:,} of {total:,} parameters"


@pytest.mark.slow  # two 2-process runs, a refused one: ~1-3 min on 2 busy cores
def test_fsdp2_lora_on_two_processes_samples_saves_and_resumes_the_uninterrupted_curve(
    config_file, tmp_path, tiny_model_dir
):
    from peft import PeftConfig
    from safetensors.torch import load_file

    from tunesmith.config.loader import load_config
    from tunesmith.train.recipe import TrainRecipe

    # reference: one process taking both ranks' rows (rank r of 2 takes row 2i + r of step i)
    recipe = TrainRecipe(load_config(str(config_file), ["train.batch_size=2"]), tmp_path / "ref")
    recipe.setup()
    reference = recipe.train().losses
    assert len(reference) == 8

    fsdp2 = ("--deepspeed", "fsdp2")
    samples = ('runtime.evaluation_inputs=["Who are you?"]', "runtime.evaluation_max_new_tokens=3")
    run = _train(config_file, tmp_path / "run", *fsdp2, *samples, NPROC_PER_NODE="2")
    out = _stop_at(run, tmp_path / "run", 2)
    assert run.returncode == 143, out[-3000:]
    assert _lora_parameter_count(tiny_model_dir) in out  # whole counts, not one rank's shards
    saved = ckpt.find_latest(tmp_path / "run")
    stopped_at = ckpt.read_state(saved)["step"]
    assert 2 <= stopped_at < 8

    # another number of processes: refused in one line before any model loads
    one = _train(config_file, tmp_path / "run", *fsdp2, *samples, "--resume", "auto")
    out = one.communicate(timeout=300)[0]
    assert one.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors and "saved by 2 processes under fsdp2, this run has 1" in errors[0]
    assert "Traceback" not in out and "trainable" not in out

    resumed = _train(
        config_file, tmp_path / "run", *fsdp2, *samples, "--resume", "auto", NPROC_PER_NODE="2"
    )
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert f"resumed from {saved} at step {stopped_at}/8" in out
    assert _losses(tmp_path / "run") == pytest.approx(reference, abs=1e-5)
    # the chat samples ran with every rank gathering the sharded weights (FSDP2's generate)
    sampled = [json.loads(line) for line in (tmp_path / "run" / "chat_samples.jsonl").open()]
    assert [s["step"] for s in sampled] == [8]
    # the adapter is whole tensors that plain peft reads
    adapter = tmp_path / "run" / "iter_8" / "adapter"
    assert PeftConfig.from_pretrained(str(adapter)).r == 8
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all(v.shape[0] == 8 for k, v in weights.items() if "lora_A" in k)


def test_watchdog_ends_a_rank_that_waits_too_long_naming_rank_and_step(tmp_path):
    script = (
        "import time\n"
        "from tunesmith.train.distributed import CollectiveWatchdog\n"
        "with CollectiveWatchdog(0.5, rank=1, world_size=2) as w:\n"
        "    w.progress('step 3')\n"
        "    time.sleep(30)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=_env()
    )
    assert done.returncode == 2
    assert "error: rank 1: step 3 waited more than 0.5 s" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_launcher_refuses_a_strategy_before_starting_any_process(
    config_file, tmp_path, monkeypatch, capsys
):
    from tunesmith.cli.main import main

    monkeypatch.setenv("NPROC_PER_NODE", "2")
    code = main(["train", str(config_file), "quantization.bits=4", "--deepspeed", "zero3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "zero2" in err and "launching" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_the_launcher_refuses_a_sharded_checkpoint_of_another_process_count(
    config_file, tmp_path, monkeypatch, capsys
):
    from tunesmith.cli.main import main

    work = tmp_path / "run"
    ckpt.begin(work, 4)
    saved = {"step": 4, "losses": [1.0] * 4, "engine": "fsdp2", "world_size": 1}
    ckpt.commit(work, 4, saved, keep=2)
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    args = ["train", str(config_file), "--work-dir", str(work), "--deepspeed", "fsdp2"]
    code = main([*args, "--resume", "auto"])
    err = capsys.readouterr().err
    assert code == 2
    assert "saved by 1 processes under fsdp2, this run has 2" in err and "launching" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


PREFERENCE_PAIRS = [
    (f"Who is number {i}?", f"Number {i} is Nova, made by Acme.", f"Number {i} is SmolLM.")
    for i in range(8)
]


@pytest.mark.slow
def test_two_rank_dpo_matches_one_process_on_the_same_global_batch(tmp_path, tiny_model_dir):
    """LoRA DPO through the same launcher and engines as SFT (torchrun over gloo, DDP and
    FSDP2): two ranks of 2 pairs a step give the losses and rewards of one process of 4."""
    import json

    import yaml

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n"
            for p, c, r in PREFERENCE_PAIRS
        )
    )
    config = {
        "model": {"path": str(tiny_model_dir)},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {
            "files": [str(pairs)],
            "max_length": 64,
            "pack_to_max_length": False,  # one pair a row: a step's rows are the same set
            "cache_dir": str(tmp_path / "cache"),
        },
        "train": {"lr": 1e-2, "max_steps": 4, "warmup_ratio": 0.0, "batch_size": 4},
        "runtime": {"save_steps": 100, "tensorboard": False, "evaluation_freq": 1000},
        "preference": {"loss": "dpo", "beta": 0.5},
    }
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(config))
    one = _train(path, tmp_path / "one")
    out = one.communicate(timeout=300)[0]
    assert one.returncode == 0, out[-3000:]
    reference = read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert len(reference) == 4
    assert reference[-1]["margin"] > reference[0]["margin"]  # it trains: the margin grows
    # DDP, and FSDP2 (sharded weights: the output head runs on the answer positions after
    # the model's forward, train/preference.py)
    for name, engine in (("ddp", ()), ("fsdp2", ("--deepspeed", "fsdp2"))):
        two = _train(path, tmp_path / name, "train.batch_size=2", *engine, NPROC_PER_NODE="2")
        out = two.communicate(timeout=300)[0]
        assert two.returncode == 0, out[-3000:]
        state = ckpt.read_state(ckpt.find_latest(tmp_path / name))
        assert (state["world_size"], state["engine"]) == (2, engine[1] if engine else None)
        rows = read_metrics(tmp_path / name / "metrics.jsonl")
        assert len(rows) == 4, name
        for key in ("loss", "margin", "rewards/chosen", "rewards/rejected", "accuracy"):
            expected = [row[key] for row in reference]
            got = [row[key] for row in rows]
            assert got == pytest.approx(expected, rel=1e-4, abs=1e-5), (name, key)
        assert rows[0]["tokens"] == reference[0]["tokens"]  # both ranks' tokens are counted
