"""`tunesmith train` end to end on a tiny model with the real data pipeline."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from train_cli_helpers import write_cli_config

from tunesmith.cli.main import main
from tunesmith.train import checkpoint as ckpt

PAIRS = [
    ("Who are you?", "I am Tuney."),
    ("What is your name?", "My name is Tuney."),
    ("Who made you?", "The tunesmith team."),
    ("Say hi.", "Hi from Tuney!"),
]


@pytest.fixture
def config_file(tmp_path, tiny_model_dir):
    train = {"lr": 1e-2, "max_steps": 3, "warmup_ratio": 0.0}
    return write_cli_config(tmp_path, tiny_model_dir, PAIRS, train, {"save_steps": 2})


def test_train_command_trains_saves_and_prints_the_export_command(config_file, tmp_path, capsys):
    work_dir = tmp_path / "run"
    code = main(
        ["train", str(config_file), "train.lr=2e-2", "--work-dir", str(work_dir), "--seed", "7"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "dataset: records 4" in out
    assert f"tunesmith convert pth_to_hf {work_dir / 'config.yaml'} {work_dir / 'iter_3'}" in out
    assert [p.name for p in ckpt.checkpoint_dirs(work_dir)] == ["iter_2", "iter_3"]
    saved = yaml.safe_load((work_dir / "iter_3" / "config.yaml").read_text())
    assert saved["train"]["seed"] == 7 and saved["train"]["lr"] == 2e-2
    assert saved["runtime"]["work_dir"] == str(work_dir)
    # the printed export command works on what was saved
    export = ["convert", "pth_to_hf", str(work_dir / "config.yaml"), str(work_dir / "iter_3")]
    assert main([*export, str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "adapter_model.safetensors").is_file()


def test_train_command_without_resume_refuses_a_work_dir_with_checkpoints(
    config_file, tmp_path, capsys
):
    work_dir = tmp_path / "run"
    assert main(["train", str(config_file), "--work-dir", str(work_dir)]) == 0
    assert main(["train", str(config_file), "--work-dir", str(work_dir)]) == 2
    assert "--resume auto" in capsys.readouterr().err
    assert main(["train", str(config_file), "train.max_steps=4",
                 "--work-dir", str(work_dir), "--resume", "auto"]) == 0  # fmt: skip
    assert ckpt.read_state(ckpt.find_latest(work_dir))["step"] == 4


@pytest.mark.slow  # a fresh interpreter and a real signal: ~17 s on 2 cores
def test_sigint_to_the_train_process_saves_a_checkpoint_and_exits_130(config_file, tmp_path):
    work_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "tunesmith.cli.main", "train", str(config_file),
           "train.max_steps=100000", "runtime.save_steps=100000", "--work-dir", str(work_dir)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics = work_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    saved = ckpt.find_latest(work_dir)
    assert saved is not None and ckpt.read_state(saved)["step"] >= 2
    assert (saved / "adapter" / "adapter_model.safetensors").is_file()
    assert "--resume auto" in out
