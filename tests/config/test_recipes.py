"""The built-in recipes: valid, documented, and the tutorial's knobs where promised."""

from __future__ import annotations

import pytest

from tunesmith.config.loader import list_recipes, load_config, recipe_path


@pytest.mark.parametrize("name", list_recipes())
def test_recipe_loads_and_opens_with_its_run_command(name):
    cfg = load_config(name)
    head = recipe_path(name).read_text(encoding="utf-8").splitlines()
    assert head[0].startswith("# ")
    commands = [line for line in head if line.startswith("#") and "tunesmith " in line]
    assert any(name in line or "identity" in line for line in commands)
    assert cfg.data.files, "a recipe names a (placeholder) data file"


def test_tutorial_recipe_has_the_tutorial_knobs():
    cfg = load_config("internlm2_5_chat_7b_qlora_alpaca_e3")
    assert cfg.model.path == "internlm/internlm2_5-7b-chat"
    assert cfg.method == "qlora"
    q = cfg.quantization
    assert (q.bits, q.quant_type, q.double_quant) == (4, "nf4", True)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (64, 16, 0.1)
    assert (cfg.data.max_length, cfg.data.pack_to_max_length) == (2048, True)
    assert cfg.data.template == "internlm2_chat"
    t = cfg.train
    assert (t.batch_size, t.accumulative_counts, t.max_epochs) == (4, 1, 3)
    assert t.lr == pytest.approx(2e-4) and t.betas == (0.9, 0.999)
    assert (t.weight_decay, t.max_norm, t.warmup_ratio) == (0, 1, 0.03)
    assert t.gradient_checkpointing is True
    r = cfg.runtime
    assert (r.save_steps, r.save_total_limit, r.evaluation_freq) == (500, 2, 500)
    assert len(r.evaluation_inputs) == 2


@pytest.mark.parametrize(
    ("name", "method", "template"),
    [
        ("internlm2_5_chat_7b_lora_alpaca_e3", "lora", "internlm2_chat"),
        ("internlm2_5_chat_7b_full_custom_e1", "full", "internlm2_chat"),
        ("qwen2_5_7b_instruct_qlora_e3", "qlora", "qwen_chat"),
        ("llama3_8b_instruct_qlora_e3", "qlora", "llama3_chat"),
    ],
)
def test_recipe_method_and_template(name, method, template):
    cfg = load_config(name)
    assert (cfg.method, cfg.data.template) == (method, template)


def test_identity_recipe_is_cpu_friendly():
    cfg = load_config("smollm2_135m_instruct_lora_identity")
    assert cfg.model.path == "smollm2-135m-instruct"
    # bf16 frozen weights (fp32 where the CPU has no bf16 arithmetic: model/load.py), no
    # dropout: both cost CPU time (docs/benchmarks.md)
    assert cfg.method == "lora" and cfg.model.dtype == "bf16" and cfg.lora.dropout == 0
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (16, 32, "all-linear")
    assert cfg.train.max_steps is None and cfg.train.max_epochs == 1  # one epoch: each record once
    assert (cfg.data.max_length, cfg.data.pack_to_max_length) == (512, True)
    assert cfg.data.template == "auto" and cfg.guard.enabled
    assert cfg.train.gradient_checkpointing is False


@pytest.mark.parametrize("name", list_recipes())
def test_recipe_template_is_one_tunesmith_has(name):
    from tunesmith.data.templates import TEMPLATE_NAMES

    assert load_config(name).data.template in TEMPLATE_NAMES
