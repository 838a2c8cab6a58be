"""Recipe tests: a tiny random Llama trained for a few steps on a packed toy dataset."""

import json
import os
import shutil
import signal

import pytest
import torch

from tunesmith.errors import UserError
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.hooks import TrainingDiverged


def test_loss_decreases_on_a_memorisable_dataset(tiny_config, run_training, tmp_path):
    # full fine-tuning: a random model needs its head trained to memorise anything
    cfg = tiny_config(lora=None, train={"lr": 3e-3, "max_steps": 12})
    _, result = run_training(cfg, tmp_path / "run")
    first, last = result.losses[0], sum(result.losses[-3:]) / 3
    assert last < first - 1.0, result.losses


def test_resume_reproduces_the_uninterrupted_losses(tiny_config, run_training, tmp_path):
    # dropout, shuffling across epochs and accumulation: RNG, data order and the
    # accumulation boundary must all be restored
    cfg = tiny_config(
        lora={"dropout": 0.1},
        train={"max_steps": 6, "warmup_ratio": 0.2, "accumulative_counts": 2},
        runtime={"save_steps": 3, "save_total_limit": -1},
    )
    _, full = run_training(cfg, tmp_path / "full")
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "iter_3", resumed_dir / "iter_3")
    _, resumed = run_training(cfg, resumed_dir, resume="auto")
    assert resumed.step == 6
    assert resumed.losses[:3] == full.losses[:3]  # carried over from the checkpoint
    assert resumed.losses[3:] == pytest.approx(full.losses[3:], abs=1e-6)


def test_accumulating_two_batches_of_one_equals_one_batch_of_two(
    tiny_config, run_training, toy_rows, tmp_path
):
    rows = toy_rows  # one document per row: rows differ in trainable tokens
    big = tiny_config(train={"batch_size": 2, "accumulative_counts": 1, "max_steps": 3})
    small = tiny_config(train={"batch_size": 1, "accumulative_counts": 2, "max_steps": 3})
    big_grads, small_grads = [], []
    _, big_run = run_training(
        big, tmp_path / "big", dataset=rows, before_train=_record_grads(big_grads)
    )
    _, small_run = run_training(
        small, tmp_path / "small", dataset=rows, before_train=_record_grads(small_grads)
    )
    assert small_run.losses == pytest.approx(big_run.losses, abs=1e-5)
    # Adam's update amplifies float noise in near-zero gradients, so compare gradients
    for a, b in zip(big_grads, small_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def _record_grads(out: list):
    """Wraps the optimizer so every step's (clipped) gradients land in `out`, concatenated."""

    def install(recipe):
        step = recipe.optimizer.step

        def recording_step(*args, **kwargs):
            grads = [p.grad.flatten() for p in recipe.model.parameters() if p.grad is not None]
            out.append(torch.cat(grads).clone())
            return step(*args, **kwargs)

        recipe.optimizer.step = recording_step

    return install


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_signal_saves_a_whole_checkpoint_that_resumes(
    sig, code, tiny_config, run_training, tmp_path
):
    cfg = tiny_config(train={"max_steps": 5})
    before = signal.getsignal(sig)

    def signal_during_step_2(recipe):
        train_step = recipe._train_step

        def step(batches):
            stats = train_step(batches)
            if recipe.step == 1:  # about to become step 2
                os.kill(os.getpid(), sig)
            return stats

        recipe._train_step = step

    _, stopped = run_training(cfg, tmp_path / "run", before_train=signal_during_step_2)
    assert stopped.stopped_by_signal == sig
    assert stopped.exit_code == code
    saved = ckpt.find_latest(tmp_path / "run")
    assert saved.name == "iter_2"
    assert (saved / "adapter" / "adapter_model.safetensors").is_file()
    assert ckpt.read_state(saved)["step"] == 2
    _, resumed = run_training(cfg, tmp_path / "run", resume="auto")
    assert resumed.step == 5 and resumed.exit_code == 0
    assert signal.getsignal(sig) is before  # the handlers are put back


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_config, run_training, tmp_path
):
    cfg = tiny_config(train={"max_steps": 6}, runtime={"save_steps": 2})

    def nan_at_step_3(recipe):
        forward = recipe.model.forward

        def poisoned(*args, **kwargs):
            out = forward(*args, **kwargs)
            if recipe.step == 2:
                out.loss = out.loss * float("nan")
            return out

        recipe.model.forward = poisoned

    with pytest.raises(TrainingDiverged, match=r"nan at step 3.*iter_2.*lower train\.lr"):
        run_training(cfg, tmp_path / "run", before_train=nan_at_step_3)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path / "run")] == ["iter_2"]
    assert ckpt.find_latest(tmp_path / "run").name == "iter_2"


def test_qlora_trains_on_cpu(tiny_config, run_training, tmp_path):
    import bitsandbytes as bnb

    cfg = tiny_config(quantization={"bits": 4}, train={"lr": 5e-2, "max_steps": 8})
    recipe, result = run_training(cfg, tmp_path / "run")
    assert cfg.method == "qlora"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in recipe.model.modules())
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert sum(result.losses[-2:]) / 2 < result.losses[0]
    assert (result.last_checkpoint / "adapter" / "adapter_config.json").is_file()


def test_full_finetune_checkpoint_is_an_hf_model_dir_and_resumes(
    tiny_config, run_training, tmp_path
):
    cfg = tiny_config(lora=None, train={"lr": 1e-3, "max_steps": 4}, runtime={"save_steps": 2})
    _, full = run_training(cfg, tmp_path / "full")
    model_dir = tmp_path / "full" / "iter_4" / "model"
    assert (model_dir / "config.json").is_file() and list(model_dir.glob("*.safetensors"))
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "iter_2", resumed_dir / "iter_2")
    _, resumed = run_training(cfg, resumed_dir, resume="auto")
    assert resumed.losses[2:] == pytest.approx(full.losses[2:], abs=1e-6)


def test_dora_trains_and_saves_its_magnitudes(tiny_config, run_training, tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_config(lora={"use_dora": True}, train={"max_steps": 2})
    _, result = run_training(cfg, tmp_path / "run")
    weights = load_file(str(result.last_checkpoint / "adapter" / "adapter_model.safetensors"))
    assert any("magnitude" in name for name in weights)


def test_work_dir_of_a_different_run_is_not_overwritten(tiny_config, run_training, tmp_path):
    run_training(tiny_config(train={"max_steps": 1}), tmp_path / "run")
    before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(UserError, match=r"different config.*differs in train\.lr"):
        run_training(tiny_config(train={"max_steps": 1, "lr": 1e-4}), tmp_path / "run")
    with pytest.raises(UserError, match="--resume auto"):
        run_training(tiny_config(train={"max_steps": 1}), tmp_path / "run")
    assert (tmp_path / "run" / "config.yaml").read_text() == before


def test_chat_samples_before_every_evaluation_freq_and_at_the_end(
    tiny_config, run_training, tmp_path
):
    cfg = tiny_config(
        data={"system": "You are Tuney."},
        train={"max_steps": 5},
        runtime={
            "evaluation_inputs": ["Who are you?"],
            "evaluation_freq": 2,
            "evaluation_max_new_tokens": 3,
        },
    )
    run_training(cfg, tmp_path / "run")
    lines = (tmp_path / "run" / "chat_samples.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    assert [s["step"] for s in samples] == [0, 2, 4, 5]
    assert all(s["input"] == "Who are you?" and isinstance(s["output"], str) for s in samples)


def test_metrics_tensorboard_and_loss_plot_are_written(tiny_config, run_training, tmp_path):
    cfg = tiny_config(train={"max_steps": 3}, runtime={"tensorboard": True})
    _, result = run_training(cfg, tmp_path / "run")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["loss"] for r in records] == pytest.approx(result.losses)
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in records)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_keeps_the_losses(method, tiny_config, run_training, tmp_path):
    parts = {"lora": None} if method == "full" else {}
    plain = tiny_config(**parts, train={"max_steps": 3, "lr": 1e-3})
    ckpt_cfg = tiny_config(
        **parts, train={"max_steps": 3, "lr": 1e-3, "gradient_checkpointing": True}
    )
    recipe, with_ckpt = run_training(ckpt_cfg, tmp_path / "ckpt")
    _, without = run_training(plain, tmp_path / "plain")
    modules = recipe.accelerator.unwrap_model(recipe.model).modules()
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in modules)
    assert with_ckpt.losses == pytest.approx(without.losses, abs=1e-5)


def test_quantization_without_lora_is_a_user_error(tiny_config, run_training, tmp_path):
    cfg = tiny_config(lora=None, quantization={"bits": 4})
    with pytest.raises(UserError, match="add a lora part"):
        run_training(cfg, tmp_path / "run")


def test_guard_mixes_base_answers_into_the_training_data(tiny_config, tmp_path, monkeypatch):
    from tunesmith.data import general
    from tunesmith.train.recipe import TrainRecipe

    data = tmp_path / "identity.jsonl"
    data.write_text(
        "".join(
            json.dumps({"conversation": [{"input": f"Who are you {i}?", "output": "I am Ada."}]})
            + "\n"
            for i in range(4)
        )
    )
    monkeypatch.setattr(general.Generator, "load", classmethod(lambda *a, **k: object()))
    monkeypatch.setattr(
        general,
        "distill",
        lambda lm, prompts, max_new_tokens: [
            {"conversation": [{"input": p, "output": "A plain answer."}]} for p in prompts[:2]
        ],
    )
    cfg = tiny_config(
        data={"files": [{"path": str(data)}], "template": "auto"},
        guard={"enabled": True, "ratio": 1.0},
        train={"max_steps": 1},
    )
    recipe = TrainRecipe(cfg, tmp_path / "run")
    recipe.setup()

    mix = [f.path for f in recipe.cfg.data.files if f.path != str(data)]
    assert len(mix) == 1 and mix[0].startswith(str(tmp_path / "run"))
    assert recipe.dataset.summary["records"] == 8  # 4 identity + 4 general (ratio 1)


def test_nan_weights_after_a_finite_loss_are_never_saved(tiny_config, run_training, tmp_path):
    """An update can leave NaN/inf weights while its own loss was finite (an `lr: .inf` did):
    the save after it is refused, so no checkpoint that resume or export trusts holds them."""
    cfg = tiny_config(train={"max_steps": 6}, runtime={"save_steps": 2})

    def nan_weights_at_step_4(recipe):
        step = recipe.optimizer.step

        def poisoned(*args, **kwargs):
            out = step(*args, **kwargs)
            if recipe.step == 3:  # the update of step 4
                with torch.no_grad():
                    for p in recipe.model.parameters():
                        if p.requires_grad:
                            p.fill_(float("nan"))
            return out

        recipe.optimizer.step = poisoned

    with pytest.raises(TrainingDiverged, match=r"after step 4 hold NaN or inf.*iter_2"):
        run_training(cfg, tmp_path / "run", before_train=nan_weights_at_step_4)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path / "run")] == ["iter_2"]
