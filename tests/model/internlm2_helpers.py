"""Tiny random InternLM2-layout checkpoints and the real InternLM2 tokenizer, for tests.

The InternLM2 tokenizer.model is not copied into the project (its README asks so);
it is read from ../shared/assets/internlm2/ beside the repo, or from
$TUNESMITH_INTERNLM2_TOKENIZER.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

ASSET = Path(
    os.environ.get(
        "TUNESMITH_INTERNLM2_TOKENIZER",
        Path(__file__).resolve().parents[3] / "shared" / "assets" / "internlm2" / "tokenizer.model",
    )
)

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32,
    "rope_theta": 1000000,
    "rope_scaling": {"type": "dynamic", "factor": 2.0},
    "rms_norm_eps": 1e-5,
    "vocab_size": 92544,
}


def internlm2_config(**overrides) -> dict:
    """A config.json dict as InternLM2.5 chat ships it, with tiny dimensions."""
    config = {
        "architectures": ["InternLM2ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "model_type": "internlm2",
        "attn_implementation": "eager",
        "bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        **TINY,
    }
    config.update(overrides)
    return config


def internlm2_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the original InternLM2 names and shapes."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = hidden // heads

    def rand(*shape, scale=0.05):
        return torch.randn(*shape, generator=gen) * scale

    sd = {
        "model.tok_embeddings.weight": rand(config["vocab_size"], hidden, scale=1.0),
        "model.norm.weight": 1 + rand(hidden, scale=0.1),
        "output.weight": rand(config["vocab_size"], hidden),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "attention.wqkv.weight"] = rand((heads + 2 * kv) * head_dim, hidden, scale=0.2)
        sd[p + "attention.wo.weight"] = rand(hidden, hidden, scale=0.2)
        sd[p + "feed_forward.w1.weight"] = rand(inter, hidden, scale=0.2)
        sd[p + "feed_forward.w3.weight"] = rand(inter, hidden, scale=0.2)
        sd[p + "feed_forward.w2.weight"] = rand(hidden, inter, scale=0.2)
        sd[p + "attention_norm.weight"] = 1 + rand(hidden, scale=0.1)
        sd[p + "ffn_norm.weight"] = 1 + rand(hidden, scale=0.1)
    return sd


def write_internlm2(out: Path, config: dict, state_dict: dict, tokenizer: bool = True) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state_dict, out / "model.safetensors", metadata={"format": "pt"})
    if tokenizer:
        shutil.copy(internlm2_tokenizer_model(), out / "tokenizer.model")
    return out


def internlm2_tokenizer_model() -> Path:
    if not ASSET.is_file():
        pytest.skip(f"InternLM2 tokenizer asset not found at {ASSET}")
    return ASSET
