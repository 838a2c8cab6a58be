"""The peft internals in tunesmith/compat/peft.py still behave as peft itself does.

A failure here means a peft release changed one of them: update that module (written against
peft 0.21) and the version range in pyproject.toml.
"""

from __future__ import annotations

import peft
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.compat import peft as peft_compat

WHERE = f"peft {peft.__version__}: update src/tunesmith/compat/peft.py"


def test_alpha_pattern_matches_what_peft_builds():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    patterns = {"q_proj": 32, "model.layers.1.mlp.down_proj": 4, "layers.0.self_attn.v_proj": 2}
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", alpha_pattern=patterns)
    model = get_peft_model(LlamaForCausalLM(config), lora)
    checked = 0
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A"):
            continue
        module_name = name.removeprefix("base_model.model.")
        alpha = peft_compat.pattern_value(patterns, module_name, 8)
        assert module.scaling["default"] == alpha / 4, (
            f"{WHERE}: get_pattern_key no longer picks the alpha peft uses for {module_name}"
        )
        checked += 1
    assert checked == 14


def test_no_pattern_gives_the_default():
    assert peft_compat.pattern_value({}, "model.layers.0.mlp.up_proj", 16) == 16
    assert peft_compat.pattern_value({"q_proj": 2}, "model.layers.0.mlp.up_proj", 16) == 16
