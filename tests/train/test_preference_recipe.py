"""Preference tuning through the one recipe: metrics, references, accumulation, QLoRA, and
(slow) a few CPU steps on the embedded model that raise the reward margin."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.preference import build_preference_dataset
from tunesmith.train.metrics import read_metrics

PAIRS = [
    ("Who are you?", "I am Nova, made by Acme.", "I am SmolLM, made by Hugging Face."),
    ("What is your name?", "My name is Nova.", "My name is SmolLM."),
    ("Who made you?", "Acme made me.", "Hugging Face made me."),
    ("Are you SmolLM?", "No, I am Nova.", "Yes, I am SmolLM."),
]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS)
    )
    return str(path)


def _run(tiny_config, pairs_file, work_dir, preference, resume=None, **parts):
    from tunesmith.train.recipe import TrainRecipe

    data = {"files": [pairs_file], "cache_dir": str(work_dir.parent / "cache")}
    data.update(parts.pop("data", {}))
    cfg = tiny_config(data=data, preference=preference, **parts)
    recipe = TrainRecipe(cfg, work_dir, resume=resume)
    recipe.setup()
    return recipe, recipe.train()


@pytest.mark.parametrize("loss", ["dpo", "simpo"])  # the maths of all four: test_preference_trl
def test_preference_run_logs_rewards_and_raises_the_margin(tiny_config, pairs_file, tmp_path, loss):
    _, result = _run(
        tiny_config, pairs_file, tmp_path / loss, {"loss": loss}, train={"max_steps": 5}
    )
    rows = read_metrics(tmp_path / loss / "metrics.jsonl")
    assert len(rows) == 5
    for key in ("loss", "rewards/chosen", "rewards/rejected", "margin", "accuracy"):
        assert all(key in row for row in rows), key
    assert rows[-1]["margin"] > rows[0]["margin"] + 1e-3
    assert rows[-1]["accuracy"] == 1.0
    assert result.losses[-1] < result.losses[0]
    if loss == "dpo":  # the checkpoint exports like an SFT one (convert pth_to_hf)
        from tunesmith.export.adapter import export_checkpoint

        out = tmp_path / "hf"
        export_checkpoint(
            str(tmp_path / loss / "config.yaml"), str(result.last_checkpoint), str(out)
        )
        assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("lora", [None, {"r": 8, "alpha": 16, "dropout": 0.0}])
def test_precomputed_reference_gives_the_same_run_as_the_live_one(
    tiny_config, pairs_file, tmp_path, lora
):
    # live: LoRA with its adapter disabled, or full fine-tuning with a frozen copy
    name = "full" if lora is None else "lora"
    parts = {"lora": lora, "train": {"max_steps": 3, "lr": 3e-3}}
    _, live = _run(tiny_config, pairs_file, tmp_path / f"{name}-live", {}, **parts)
    pre_dir = tmp_path / f"{name}-pre"
    _, pre = _run(tiny_config, pairs_file, pre_dir, {"reference": "precomputed"}, **parts)
    assert (pre_dir / "reference_logps.safetensors").is_file()
    assert pre.losses == pytest.approx(live.losses, abs=1e-5)
    assert live.losses[-1] < live.losses[0]


def test_resumed_preference_run_reproduces_the_uninterrupted_losses(
    tiny_config, pairs_file, tmp_path
):
    import shutil

    parts = {
        "train": {"max_steps": 4, "batch_size": 1},
        "data": {"pack_to_max_length": False},  # one pair a step: steps differ
        "runtime": {"save_steps": 2, "save_total_limit": -1},
    }
    pref = {"reference": "precomputed"}
    _, full = _run(tiny_config, pairs_file, tmp_path / "full", pref, **parts)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "iter_2", resumed_dir / "iter_2")
    shutil.copy(tmp_path / "full" / "reference_logps.safetensors", resumed_dir)
    _, resumed = _run(tiny_config, pairs_file, resumed_dir, pref, resume="auto", **parts)
    assert resumed.losses == pytest.approx(full.losses, abs=1e-6)


def test_two_micro_batches_of_one_pair_equal_one_batch_of_two(tiny_config, pairs_file, tmp_path):
    unpacked = {"pack_to_max_length": False}  # one pair a row
    runs = []
    for name, train in (
        ("big", {"batch_size": 2, "accumulative_counts": 1}),
        ("small", {"batch_size": 1, "accumulative_counts": 2}),
    ):
        from tunesmith.train.recipe import TrainRecipe

        data = {"files": [pairs_file], "cache_dir": str(tmp_path / "cache"), **unpacked}
        cfg = tiny_config(data=data, preference={}, train={"max_steps": 3, **train})
        recipe = TrainRecipe(cfg, tmp_path / name)
        recipe.setup()
        runs.append(recipe.train().losses)
    assert runs[1] == pytest.approx(runs[0], abs=1e-5)


def test_qlora_dpo_trains_on_cpu(tiny_config, pairs_file, tmp_path):
    pytest.importorskip("bitsandbytes")
    _, result = _run(
        tiny_config,
        pairs_file,
        tmp_path / "qlora",
        {"loss": "dpo"},
        quantization={"bits": 4},
        train={"max_steps": 2},
    )
    assert result.step == 2 and all(loss == loss for loss in result.losses)
    assert (result.last_checkpoint / "adapter" / "adapter_model.safetensors").is_file()


def test_preference_with_the_forgetting_guard_is_refused_before_any_write(
    tiny_config, pairs_file, tmp_path
):
    from tunesmith.errors import UserError

    with pytest.raises(UserError, match="guard.enabled"):
        _run(tiny_config, pairs_file, tmp_path / "run", {}, guard={"enabled": True})
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_dpo_on_the_embedded_model_raises_the_margin(tmp_path, pairs_file):
    """A few CPU steps of LoRA DPO on SmolLM2-135M-Instruct (~1 min on 2 cores)."""
    from tunesmith.config.schema import Config
    from tunesmith.model.load import load_tokenizer
    from tunesmith.train.recipe import TrainRecipe

    cfg = Config.model_validate(
        {
            "model": {"path": "smollm2-135m-instruct"},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "data": {"files": [pairs_file], "cache_dir": str(tmp_path / "cache")},
            "train": {"lr": 5e-4, "max_steps": 3, "batch_size": 4, "warmup_ratio": 0.0},
            "runtime": {"save_steps": 100, "tensorboard": False, "evaluation_freq": 1000},
            "preference": {"loss": "dpo", "beta": 0.1},
        }
    )
    dataset = build_preference_dataset(cfg, load_tokenizer(cfg.model.path), progress=False)
    recipe = TrainRecipe(cfg, tmp_path / "run", dataset=dataset)
    recipe.setup()
    recipe.train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at step 1
    assert rows[-1]["margin"] > 0.05, rows


def _reference_logps(model, batch, num_sequences):
    """The obvious formulation: whole-batch logits, log-softmax, gather the labels."""
    import torch

    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    labels, index = batch["labels"][:, 1:], batch["sequence_index"][:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    picked = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0][mask]
    return torch.zeros(num_sequences, dtype=torch.float64).index_add(0, index[mask], picked)


@pytest.mark.parametrize("chunk", [1024, 7])
def test_log_probs_from_hidden_states_equal_whole_logits_with_gradients(
    tiny_config, pairs_file, tmp_path, monkeypatch, chunk
):
    """Chunked log-probs through the lm_head (no (B, L, V) logits) give the loss and the LoRA
    gradients of the whole-logits formulation; chunk 7 splits sequences across chunks. In float64,
    so what is left is rounding (in float32 the chunked sums differ by ~1e-6 relative)."""
    import torch

    from tunesmith.train import preference
    from tunesmith.train.recipe import TrainRecipe

    monkeypatch.setattr(preference, "LOGP_CHUNK", chunk)
    data = {"files": [pairs_file], "cache_dir": str(tmp_path / "cache")}
    cfg = tiny_config(data=data, preference={"loss": "dpo"}, train={"batch_size": 2})
    recipe = TrainRecipe(cfg, tmp_path / "run")
    recipe.setup()
    model = recipe.model.double()
    batch = recipe.dataset.collate([recipe.dataset[i] for i in range(len(recipe.dataset))])
    n = 2 * len(batch["pair_ids"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # a reference that differs from the policy
        for p in trainable:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    weights = torch.linspace(-1.0, 2.0, n, dtype=torch.float64)
    results = []
    for logps in (
        lambda: preference.forward_logps(model, batch, n)[0],
        lambda: _reference_logps(model, batch, n),
    ):
        sums = logps()
        (sums * weights).sum().backward()
        results.append((sums.detach(), [p.grad.clone() for p in trainable]))
        model.zero_grad(set_to_none=True)
    (ours, our_grads), (ref, ref_grads) = results
    assert (ours != 0).all() and ours.shape == (n,)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-10)
    for a, b in zip(our_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the whole objective (DPO with the adapter-disabled reference) agrees too
    denominators = preference.PreferenceObjective.denominators([batch])
    loss, _ = recipe.objective(model, batch, denominators)
    with torch.no_grad(), model.disable_adapter():
        ref_logps = _reference_logps(model, batch, n)
    ratios = ref - ref_logps
    expected = preference.dpo_loss(ratios[0::2], ratios[1::2], cfg.preference.beta).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-12, atol=1e-12)


def test_damaged_reference_log_probs_are_named_not_a_traceback(tiny_config, pairs_file, tmp_path):
    from tunesmith.errors import UserError

    parts = {"train": {"max_steps": 1, "batch_size": 1}, "runtime": {"save_steps": 1}}
    pref = {"reference": "precomputed"}
    _run(tiny_config, pairs_file, tmp_path / "run", pref, **parts)
    table = tmp_path / "run" / "reference_logps.safetensors"
    table.write_bytes(table.read_bytes()[:40])  # cut short
    with pytest.raises(UserError, match=r"reference_logps\.safetensors: damaged"):
        _run(tiny_config, pairs_file, tmp_path / "run", pref, resume="auto", **parts)
