"""train.memory_budget: the choice from measured peaks, the planner's steps, the config checks."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.config.loader import load_config
from tunesmith.errors import UserError
from tunesmith.train import memory
from tunesmith.train.memory import PeakPoint, auto_budget, choose_checkpointing

GIB = 2**30
# Measured on one H200 (docs/benchmarks.md, 2026-11-30): QLoRA r=64 on a 7B, 4 x 2048 packed:
# all 32 layers checkpointed 10.85 GiB, the first 16 only 36.02 GiB (1.573 GiB a layer).
H200_POINTS = [PeakPoint(32, round(10.85 * GIB)), PeakPoint(16, round(36.02 * GIB))]


def test_budget_of_xtuners_peak_checkpoints_as_few_layers_as_fit():
    choice = choose_checkpointing(H200_POINTS, 32, round(23.3 * GIB))
    # 23.3 GiB less 3% headroom = 22.60 GiB: 7 layers of 1.573 GiB above 10.85 fit, 8 do not
    assert choice.checkpoint_layers == 25
    assert not choice.offload_optimizer and choice.fits
    assert choice.per_layer == pytest.approx(1.573 * GIB, rel=1e-3)
    assert choice.predicted_peak == pytest.approx((10.85 + 7 * 1.573) * GIB, rel=1e-3)
    assert choice.predicted_peak <= 23.3 * GIB * 0.97


def test_a_large_budget_checkpoints_no_layer():
    choice = choose_checkpointing(H200_POINTS, 32, auto_budget(143_771 * 2**20))
    assert choice.checkpoint_layers == 0 and choice.fits
    assert choice.predicted_peak == pytest.approx((10.85 + 32 * 1.573) * GIB, rel=1e-3)


def test_auto_budget_leaves_a_margin_of_the_card():
    assert auto_budget(80 * GIB) == pytest.approx(80 * GIB * 0.92, abs=1)
    assert auto_budget(24 * GIB) == 21 * GIB  # at least 3 GiB


def test_offload_only_when_no_layer_count_fits():
    state = round(1.3 * GIB)
    lean = [PeakPoint(32, round(8.03 * GIB)), PeakPoint(30, round(8.43 * GIB))]
    fits_without = choose_checkpointing(lean, 32, 9 * GIB, optimizer_state_bytes=state)
    # 9 GiB less 3% = 8.73: 3 layers of 0.2 GiB above 8.03 fit
    assert not fits_without.offload_optimizer and fits_without.checkpoint_layers == 29
    offloaded = choose_checkpointing(lean, 32, 7 * GIB, optimizer_state_bytes=state)
    assert offloaded.offload_optimizer and offloaded.fits
    assert offloaded.checkpoint_layers == 32  # 8.03 - 1.3 = 6.73 GiB; one layer more: 6.93 > 6.79
    assert offloaded.predicted_peak == pytest.approx(6.73 * GIB, rel=1e-3)


def test_nothing_fits_keeps_every_layer_checkpointed_and_says_so():
    choice = choose_checkpointing(H200_POINTS, 32, 8 * GIB, optimizer_state_bytes=GIB)
    assert (choice.checkpoint_layers, choice.offload_optimizer, choice.fits) == (32, True, False)
    assert "does NOT fit" in choice.describe(32, 8 * GIB)
    assert choose_checkpointing(H200_POINTS, 32, 8 * GIB).offload_optimizer is False


def test_slope_is_a_least_squares_fit_and_never_negative():
    noisy = [PeakPoint(8, 100), PeakPoint(6, 121), PeakPoint(4, 139)]
    assert memory.per_layer_bytes(noisy) == pytest.approx(9.75)
    flat = [PeakPoint(8, 100), PeakPoint(6, 99)]  # un-checkpointing cost nothing measurable
    assert memory.per_layer_bytes(flat) == 0
    assert choose_checkpointing(flat, 8, 200).checkpoint_layers == 0


def test_one_layer_count_is_not_a_profile():
    with pytest.raises(ValueError, match="two different"):
        choose_checkpointing([PeakPoint(32, GIB), PeakPoint(32, GIB)], 32, 24 * GIB)


def _checkpointed_llama(layers: int = 4) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def test_planner_measures_all_then_all_but_two_and_applies_the_choice():
    """Steps 1-3 run with 4, 4, 2 layers checkpointed; the peaks of steps 2 and 3 decide."""
    model = _checkpointed_llama(4)
    said, resets = [], []
    planner = memory.CheckpointPlanner(
        model, torch.optim.AdamW(model.parameters()), budget=10 * GIB, budget_text="10GiB",
        say=said.append, reset_peak=lambda: resets.append(1),
    )  # fmt: skip
    flags = lambda: [layer.gradient_checkpointing for layer in model.model.layers]  # noqa: E731
    seen = []
    for peak in (9 * GIB, 6 * GIB, 8 * GIB, 7 * GIB, 99 * GIB):
        planner.before_step()
        seen.append(flags())
        planner.after_step(peak)
    assert seen[:4] == [[True] * 4, [True] * 4, [True, True, False, False], [True] + [False] * 3]
    # 6 GiB + 1 GiB a layer; 9.7 GiB allowed -> 3 layers un-checkpointed, 1 checkpointed
    assert planner.choice.checkpoint_layers == 1 and planner.choice.per_layer == GIB
    assert seen[4] == seen[3] and len(resets) == 4  # measuring stops after the choice's step
    assert "6.00 GiB with 4/4 checkpointed, 8.00 GiB with 2/4" in said[0]
    assert "checkpointing 1 of 4 layers" in said[0]
    assert "measured peak 7.00 GiB with the choice (predicted 9.00 GiB" in said[1]
    assert len(said) == 2


def test_planner_refuses_a_model_without_decoder_layers():
    with pytest.raises(ValueError, match="found none"):
        memory.CheckpointPlanner(torch.nn.Linear(2, 2), None, GIB, "1GiB", say=print)


def test_planner_refuses_a_model_without_checkpointing():
    model = _checkpointed_llama(2)
    model.model.layers[1].gradient_checkpointing = False
    with pytest.raises(ValueError, match="checkpointing enabled"):
        memory.CheckpointPlanner(model, None, GIB, "1GiB", say=print, reset_peak=lambda: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offloaded_optimizer_state_gives_the_same_updates():
    torch.manual_seed(0)
    a = torch.nn.Linear(64, 64).cuda()
    b = torch.nn.Linear(64, 64).cuda()
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = torch.optim.AdamW(a.parameters()), torch.optim.AdamW(b.parameters())
    offload = memory.OptimizerStateOffload(opt_b)
    for _ in range(3):
        x = torch.randn(8, 64, device="cuda")
        for model in (a, b):
            model(x).square().mean().backward()
        opt_a.step()
        offload.restore()
        opt_b.step()
        offload.offload()
        assert memory.optimizer_state_bytes(opt_b) == 0
        for opt in (opt_a, opt_b):
            opt.zero_grad()
    torch.testing.assert_close(a.weight, b.weight)


@pytest.mark.parametrize(
    "value, expected", [("24GB", 24 * 10**9), ("22GiB", 22 * GIB), ("auto", None), ("AUTO", None)]
)
def test_memory_budget_reads_sizes_and_auto(value, expected):
    cfg = load_config("internlm2_5_chat_7b_qlora_alpaca_e3", [f"train.memory_budget={value}"])
    assert cfg.train.memory_budget_bytes == expected


@pytest.mark.parametrize("value", ["24 apples", "1.5GB", "0GB", "lots", "-1GB"])
def test_memory_budget_that_is_not_a_size_names_the_key(value):
    with pytest.raises(UserError, match=r"train\.memory_budget.*not a size|at least 1 byte"):
        load_config("internlm2_5_chat_7b_qlora_alpaca_e3", [f"train.memory_budget={value}"])


def test_memory_budget_with_checkpoint_layers_or_without_checkpointing_is_refused():
    with pytest.raises(UserError, match="memory_budget and train.checkpoint_layers"):
        load_config(
            "internlm2_5_chat_7b_qlora_alpaca_e3",
            ["train.memory_budget=24GB", "train.checkpoint_layers=8"],
        )
    with pytest.raises(UserError, match="needs train.gradient_checkpointing: true"):
        load_config(
            "internlm2_5_chat_7b_qlora_alpaca_e3",
            ["train.memory_budget=24GB", "train.gradient_checkpointing=false"],
        )


def test_bad_memory_budget_on_the_command_line_exits_2(tmp_path, capsys):
    from tunesmith.cli.main import main

    code = main(["train", "internlm2_5_chat_7b_qlora_alpaca_e3", "train.memory_budget=24 apples"])
    err = capsys.readouterr().err
    assert code == 2 and "train.memory_budget" in err and "Traceback" not in err


def test_seven_b_recipes_default_to_the_cards_memory():
    for name in (
        "internlm2_5_chat_7b_qlora_alpaca_e3",
        "internlm2_5_chat_7b_lora_alpaca_e3",
        "llama3_8b_instruct_qlora_e3",
        "qwen2_5_7b_instruct_qlora_e3",
        "internlm2_5_chat_7b_full_custom_e1",
        "internlm2_5_chat_7b_qlora_dpo",
    ):
        assert load_config(name).train.memory_budget == "auto", name


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")
def test_memory_budget_without_cuda_is_ignored_out_loud(
    tiny_config, run_training, tmp_path, capsys
):
    cfg = tiny_config(
        train={"gradient_checkpointing": True, "memory_budget": "24GB", "max_steps": 2}
    )
    recipe, result = run_training(cfg, tmp_path / "run")
    out = capsys.readouterr().out
    assert "train.memory_budget=24GB is ignored: no CUDA device (cpu)" in out
    assert recipe.memory_planner is None and result.step == 2
    layers = memory.hf_compat.checkpointed_layers(recipe.model)
    assert layers and all(layer.gradient_checkpointing for layer in layers)


def test_recipe_runs_the_planner_around_its_steps(tiny_config, tmp_path, toy_dataset, capsys):
    """The recipe's wiring, CUDA's peaks faked: steps 1-3 measured, the choice applied from
    step 4 and logged per step in metrics.jsonl."""
    import json

    from tunesmith.train.recipe import TrainRecipe

    cfg = tiny_config(train={"gradient_checkpointing": True, "max_steps": 5})
    recipe = TrainRecipe(cfg, tmp_path / "run", dataset=toy_dataset)
    recipe.setup()
    peaks = iter([5.0, 3.0, 3.5, 3.2, 3.2])  # GiB; 2 layers: 0.25 GiB a layer
    recipe._peak_memory = lambda: {"peak_gib": next(peaks)}
    recipe.memory_planner = memory.CheckpointPlanner(
        recipe.model, recipe.optimizer, budget=round(3.4 * GIB), budget_text="3.4GiB",
        say=print, reset_peak=lambda: None,
    )  # fmt: skip
    recipe.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    # 3.4 GiB less 3% = 3.298: 3.0 + 0.25 fits (1 of 2 checkpointed), 3.5 does not
    assert [r["checkpointed_layers"] for r in rows] == [2, 2, 0, 1, 1]
    out = capsys.readouterr().out
    assert "checkpointing 1 of 2 layers: predicted peak 3.25 GiB" in out
    assert "measured peak 3.20 GiB with the choice" in out
