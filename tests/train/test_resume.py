"""Resume safety: settings that do not fit a checkpoint, older checkpoints, crash windows."""

from __future__ import annotations

import json
import shutil

import pytest

from tunesmith.errors import UserError
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.metrics import read_metrics


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"lora": {"r": 16}}, "lora.r: 8 -> 16"),
        ({"lora": {"target_modules": ["q_proj"]}}, "lora.target_modules: all-linear -> ['q_proj']"),
        ({"lora": {"use_dora": True}}, "lora.use_dora: False -> True"),
        ({"quantization": {"bits": 4}}, "quantization: null -> set"),
        ({"lora": None}, "lora: set -> null"),
    ],
)
def test_resume_with_a_setting_that_does_not_fit_is_refused_naming_both_values(
    change, named, tiny_config, run_training, tmp_path, monkeypatch
):
    run_training(tiny_config(train={"max_steps": 1}), tmp_path / "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}

    def no_model_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr("tunesmith.model.load.load_model", no_model_load)
    with pytest.raises(UserError) as refused:
        run_training(tiny_config(train={"max_steps": 2}, **change), tmp_path / "run", resume="auto")
    message = str(refused.value)
    assert named in message and "\n" not in message
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_resume_with_another_model_is_refused(
    tiny_config, run_training, tmp_path, no_template_model_dir
):
    run_training(tiny_config(train={"max_steps": 1}), tmp_path / "run")
    cfg = tiny_config(model={"path": str(no_template_model_dir)}, train={"max_steps": 2})
    with pytest.raises(UserError, match=r"model\.path: .* -> .*no-template"):
        run_training(cfg, tmp_path / "run", resume="auto")


def test_harmless_changes_are_reported_and_accepted(tiny_config, run_training, tmp_path, capsys):
    run_training(tiny_config(train={"max_steps": 2}, runtime={"save_steps": 2}), tmp_path / "run")
    cfg = tiny_config(train={"max_steps": 3, "lr": 5e-3}, runtime={"save_steps": 3})
    _, result = run_training(cfg, tmp_path / "run", resume="auto")
    out = capsys.readouterr().out
    assert "resuming with changed settings: " in out
    for line in (
        "train.lr: 0.01 -> 0.005",
        "train.max_steps: 2 -> 3",
        "runtime.save_steps: 2 -> 3",
    ):
        assert line in out
    assert result.step == 3


def test_resuming_an_older_checkpoint_moves_the_newer_ones_aside(
    tiny_config, run_training, tmp_path, capsys
):
    # run A saves iter_1..iter_4; run B resumes iter_1 with save_total_limit=1
    work = tmp_path / "run"
    a = tiny_config(train={"max_steps": 4}, runtime={"save_steps": 1, "save_total_limit": -1})
    run_training(a, work)
    b = tiny_config(train={"max_steps": 3}, runtime={"save_steps": 1, "save_total_limit": 1})
    _, result = run_training(b, work, resume=str(work / "iter_1"))
    out = capsys.readouterr().out
    assert [p.name for p in ckpt.checkpoint_dirs(work)] == ["iter_3"]
    assert (work / "latest").read_text().strip() == "iter_3"
    assert ckpt.find_latest(work) == work / "iter_3" == result.last_checkpoint
    (aside,) = work.glob("superseded-*")
    assert sorted(p.name for p in aside.iterdir()) == ["iter_2", "iter_3", "iter_4"]
    assert f"moved the newer iter_2, iter_3, iter_4 to {aside}" in out
    assert ckpt.read_state(aside / "iter_4")["step"] == 4  # run A's work is kept whole


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path):
    ckpt.save_atomic(tmp_path, 5, lambda out: {"step": 5})  # a newer one from elsewhere
    written = ckpt.save_atomic(tmp_path, 2, lambda out: {"step": 2}, keep=1)
    assert written.is_dir() and ckpt.is_whole(written)
    assert ckpt.find_latest(tmp_path) == written


def test_a_delete_killed_midway_leaves_nothing_that_looks_whole(tmp_path, monkeypatch):
    path = ckpt.save_atomic(
        tmp_path, 3, lambda out: (out / "w.bin").write_bytes(b"x") and {"step": 3}
    )

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # SIGKILL stand-in: nothing after this runs

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.delete(path)
    assert path.is_dir() and (path / "w.bin").is_file()  # the files are still there,
    assert ckpt.checkpoint_dirs(tmp_path) == []  # but it no longer looks whole
    with pytest.raises(UserError, match="not a whole checkpoint"):
        ckpt.resolve_resume(str(path), tmp_path)


def test_a_torn_last_metrics_line_is_skipped_and_resume_works(tiny_config, run_training, tmp_path):
    work = tmp_path / "run"
    run_training(tiny_config(train={"max_steps": 2}, runtime={"save_steps": 2}), work)
    with (work / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 1.2')  # killed mid-write
    assert [r["step"] for r in read_metrics(work / "metrics.jsonl")] == [1, 2]
    _, result = run_training(tiny_config(train={"max_steps": 3}), work, resume="auto")
    assert result.step == 3
    assert [r["step"] for r in read_metrics(work / "metrics.jsonl")] == [1, 2, 3]


def test_a_broken_metrics_line_before_the_last_names_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"metrics\.jsonl:2"):
        read_metrics(path)


def test_a_sharded_checkpoint_on_another_number_of_processes_is_refused(tmp_path):
    (tmp_path / "state").mkdir()
    state = {"engine": "zero3", "world_size": 2}
    with pytest.raises(UserError, match=r"saved by 2 processes under zero3, this run has 1"):
        ckpt.check_engine(state, "zero3", 1, tmp_path)
    with pytest.raises(UserError, match=r"saved under zero3, this run uses none"):
        ckpt.check_engine(state, None, 2, tmp_path)
    ckpt.check_engine({"engine": None, "world_size": 2}, None, 1, tmp_path)  # DDP: any number


DAMAGES = {  # file -> (bytes written over it, what the message names)
    "trainer_state.json": (b"{torn", "trainer_state.json"),
    "config.yaml": (b"lora: [", "config.yaml"),
    "state/optimizer.bin": (b"PK\x03\x04 cut short", "state"),  # accelerate loads the dir
    "scheduler.pt": (b"", "scheduler.pt"),
    "state/random_states_0.pkl": (b"", "state/random_states_0.pkl"),  # was resumed silently
    "adapter/adapter_model.safetensors": (b"\x10" + b"\x00" * 7 + b"{", "adapter/adapter_model"),
}


def test_a_damaged_checkpoint_file_is_named_in_one_line(tiny_config, run_training, tmp_path):
    """An emptied scheduler.pt was an EOFError traceback, a torn optimizer state a 20-line
    RuntimeError, a torn trainer_state.json a JSONDecodeError."""
    cfg = tiny_config(train={"max_steps": 1})
    run_training(cfg, tmp_path / "run")
    whole = tmp_path / "run" / "iter_1"
    for name, (damage, named) in DAMAGES.items():
        copy = tmp_path / name.replace("/", "-") / "iter_1"
        shutil.copytree(whole, copy)
        (copy / name).write_bytes(damage)
        before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        with pytest.raises(UserError) as refused:
            run_training(cfg, tmp_path / f"resumed-{copy.parent.name}", resume=str(copy))
        message = str(refused.value)
        assert message.startswith(f"{copy / named}"), message
        assert ": damaged, this checkpoint cannot be loaded (" in message
        assert "\n" not in message and "--resume" in message
        assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def _whole(work, step):
    (work / f"iter_{step}").mkdir(parents=True)
    (work / f"iter_{step}" / ckpt.STATE_FILE).write_text(json.dumps({"step": step}))
    return work / f"iter_{step}"


@pytest.mark.parametrize(
    "latest", [b"\xff\xfe", b"../other/iter_9\n", b"iter_7\n", b""], ids=lambda b: repr(b)
)
def test_a_damaged_latest_pointer_falls_back_to_the_newest_whole_checkpoint(tmp_path, latest):
    """Bytes that are not UTF-8 in `latest` were a UnicodeDecodeError traceback (train
    --resume auto, pth_to_hf WORK_DIR); a path in it was followed out of the work dir."""
    work = tmp_path / "run"
    _whole(tmp_path / "other", 9)
    _whole(work, 2)
    newest = _whole(work, 4)
    (work / "latest").write_bytes(latest)
    assert ckpt.find_latest(work) == newest


def test_a_metrics_log_that_is_not_utf8_or_not_objects_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n\xff\n')
    with pytest.raises(UserError, match=r"metrics\.jsonl: not UTF-8 text"):
        read_metrics(path)
    path.write_text('{"step": 1}\n5\n{"step": 3}\n[1]\n')  # a torn last line is skipped
    with pytest.raises(UserError, match=r"metrics\.jsonl:2: not a JSON object line"):
        read_metrics(path)
    path.write_text('{"step": 1}\n[1]\n')
    assert read_metrics(path) == [{"step": 1}]
