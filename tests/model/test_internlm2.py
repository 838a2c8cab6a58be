"""InternLM2 without remote code: mapping, native load, reference forward, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from internlm2_helpers import internlm2_config, internlm2_state_dict, write_internlm2
from safetensors.torch import load_file

from tunesmith.config.schema import LoraConfig, ModelConfig, QuantizationConfig
from tunesmith.errors import UserError
from tunesmith.model.adapters import apply_lora
from tunesmith.model.internlm2 import internlm2_to_llama, llama_to_internlm2
from tunesmith.model.load import load_model


def reference_logits(sd: dict, config: dict, ids: list[int]) -> torch.Tensor:
    """InternLM2's forward written from its layout facts, in plain torch (one sequence)."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv, eps = config["num_key_value_heads"], config["rms_norm_eps"]
    head_dim, groups, seq = hidden // heads, heads // kv, len(ids)

    base = config["rope_theta"]
    max_pos, factor = config["max_position_embeddings"], config["rope_scaling"]["factor"]
    if seq > max_pos:  # dynamic NTK: a larger base, only beyond max_position_embeddings
        base = base * ((factor * seq / max_pos) - (factor - 1)) ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rms_norm(x, weight):
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def rotate_half(x):
        return torch.cat([-x[..., head_dim // 2 :], x[..., : head_dim // 2]], -1)

    def rope(x):  # (seq, heads, head_dim)
        return x * cos[:, None] + rotate_half(x) * sin[:, None]

    x = sd["model.tok_embeddings.weight"][torch.tensor(ids)]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, sd[p + "attention_norm.weight"])
        qkv = (h @ sd[p + "attention.wqkv.weight"].T).view(seq, kv, groups + 2, head_dim)
        q = rope(qkv[:, :, :groups].reshape(seq, heads, head_dim))
        k = rope(qkv[:, :, groups]).repeat_interleave(groups, dim=1)  # query head h uses kv h // G
        v = qkv[:, :, groups + 1].repeat_interleave(groups, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim)
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        out = torch.einsum("hqk,khd->qhd", attn, v).reshape(seq, hidden)
        x = x + out @ sd[p + "attention.wo.weight"].T
        h = rms_norm(x, sd[p + "ffn_norm.weight"])
        gate, up = h @ sd[p + "feed_forward.w1.weight"].T, h @ sd[p + "feed_forward.w3.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ sd[p + "feed_forward.w2.weight"].T
    return rms_norm(x, sd["model.norm.weight"]) @ sd["output.weight"].T


def test_mapping_round_trips_bit_exactly():
    config = internlm2_config()
    original = internlm2_state_dict(config, seed=1)
    llama_sd, llama_cfg = internlm2_to_llama(original, config)
    back, back_config = llama_to_internlm2(llama_sd, llama_cfg, original=config)
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name
    assert back_config == config


def test_wqkv_is_split_per_kv_group():
    config = internlm2_config()
    sd = internlm2_state_dict(config)
    llama_sd, _ = internlm2_to_llama(sd, config)
    head_dim, groups = 8, 4
    wqkv = sd["model.layers.0.attention.wqkv.weight"]
    q = llama_sd["model.layers.0.self_attn.q_proj.weight"]
    k = llama_sd["model.layers.0.self_attn.k_proj.weight"]
    # second KV group: rows start after the first group's G + 2 heads
    block = (groups + 2) * head_dim
    assert torch.equal(
        q[groups * head_dim : (groups + 1) * head_dim], wqkv[block : block + head_dim]
    )
    assert torch.equal(
        k[head_dim : 2 * head_dim],
        wqkv[block + groups * head_dim : block + (groups + 1) * head_dim],
    )


def test_config_carries_dynamic_rope_scaling():
    _, llama_cfg = internlm2_to_llama(internlm2_state_dict(internlm2_config()), internlm2_config())
    assert llama_cfg.rope_parameters["rope_type"] == "dynamic"
    assert llama_cfg.rope_parameters["factor"] == 2.0
    assert llama_cfg.rope_parameters["rope_theta"] == 1e6
    assert llama_cfg.attention_bias is False and llama_cfg.mlp_bias is False


def test_loads_as_llama_without_remote_code(internlm2_dir):
    model = load_model(ModelConfig(path=str(internlm2_dir)), device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.tunesmith_source["model_type"] == "internlm2"
    assert model.config.tunesmith_source["auto_map"]["AutoConfig"].startswith("configuration_")
    assert model.name_or_path == str(internlm2_dir)
    adapter = apply_lora(model, LoraConfig(r=4))
    assert adapter.peft_config["default"].base_model_name_or_path == str(internlm2_dir)


@pytest.mark.parametrize("seq", [12, 40], ids=["within-max-positions", "dynamic-ntk"])
def test_logits_equal_reference_forward(internlm2_dir, seq):
    config = json.loads((internlm2_dir / "config.json").read_text())
    sd = load_file(internlm2_dir / "model.safetensors")
    ids = torch.randint(3, config["vocab_size"], (seq,), generator=torch.Generator().manual_seed(0))
    model = load_model(ModelConfig(path=str(internlm2_dir)), device="cpu")
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0]
    expected = reference_logits(sd, config, ids.tolist())
    assert torch.allclose(logits, expected, atol=2e-5, rtol=1e-4), (logits - expected).abs().max()


def test_loaded_weights_map_back_to_the_checkpoint(internlm2_dir):
    model = load_model(ModelConfig(path=str(internlm2_dir)), device="cpu")
    back, _ = llama_to_internlm2(model.state_dict(), model.config)
    original = load_file(internlm2_dir / "model.safetensors")
    assert set(back) == set(original)
    assert all(torch.equal(back[n], original[n]) for n in original)


def test_conversion_is_cached(internlm2_dir):
    from tunesmith.model.internlm2 import llama_checkpoint

    first = llama_checkpoint(internlm2_dir)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert llama_checkpoint(internlm2_dir) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp


def test_changed_checkpoint_replaces_its_stale_copy(tmp_path):
    from tunesmith.model.internlm2 import llama_checkpoint

    config = internlm2_config(vocab_size=512)
    path = write_internlm2(tmp_path / "m", config, internlm2_state_dict(config), tokenizer=False)
    first = llama_checkpoint(path)
    write_internlm2(path, config, internlm2_state_dict(config, seed=7), tokenizer=False)
    second = llama_checkpoint(path)
    assert second != first and not first.exists()
    assert torch.equal(
        load_file(second / "model-00001-of-00001.safetensors")["model.norm.weight"],
        load_file(path / "model.safetensors")["model.norm.weight"],
    )


def test_a_damaged_llama_copy_is_made_again(tmp_path, capsys):
    """A cached shard cut short was an error on every later load ("copy or export it again")."""
    from tunesmith.model.internlm2 import llama_checkpoint

    config = internlm2_config(vocab_size=512)
    path = write_internlm2(tmp_path / "m", config, internlm2_state_dict(config), tokenizer=False)
    shard = llama_checkpoint(path) / "model-00001-of-00001.safetensors"
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])
    assert llama_checkpoint(path) == shard.parent
    assert shard.read_bytes() == whole
    assert f"note: the cached copy {shard.parent} is damaged" in capsys.readouterr().out


def test_processes_started_together_convert_once(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from tunesmith.model import internlm2

    config = internlm2_config(vocab_size=512)
    path = write_internlm2(tmp_path / "m", config, internlm2_state_dict(config), tokenizer=False)
    calls = []
    write = internlm2._write_llama_copy

    def counting_write(*args):
        calls.append(args)
        write(*args)

    monkeypatch.setattr(internlm2, "_write_llama_copy", counting_write)
    with ThreadPoolExecutor(3) as pool:
        targets = list(pool.map(lambda _: internlm2.llama_checkpoint(path), range(3)))
    assert len(set(targets)) == 1 and (targets[0] / "config.json").exists()
    assert len(calls) == 1


def test_qlora_on_internlm2_quantizes_mapped_linears_and_trains(tmp_path):
    import bitsandbytes as bnb

    # bitsandbytes' CPU 4-bit kernel needs out_features divisible by 32: head_dim 16
    config = internlm2_config(hidden_size=128, intermediate_size=256, vocab_size=1024)
    path = write_internlm2(tmp_path / "m", config, internlm2_state_dict(config), tokenizer=False)
    model = load_model(ModelConfig(path=str(path)), quantization=QuantizationConfig(), device="cpu")
    assert isinstance(model.model.layers[0].self_attn.k_proj, bnb.nn.Linear4bit)
    model = apply_lora(model, LoraConfig(r=4, dropout=0.0))
    targeted = {n for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert len(targeted) == 2 * 7
    assert not any("lm_head" in n or "embed" in n for n in targeted)
    ids = torch.randint(3, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    before = model(input_ids=ids, labels=ids).loss
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = model(input_ids=ids, labels=ids).loss
    assert after.item() < before.item()


def test_checkpoint_with_bias_names_the_tensor(tmp_path):
    config = internlm2_config()
    sd = internlm2_state_dict(config)
    sd["model.layers.1.attention.wqkv.bias"] = torch.zeros(96)
    path = write_internlm2(tmp_path / "m", config, sd, tokenizer=False)
    with pytest.raises(UserError, match=r"model\.layers\.1\.attention\.wqkv\.bias"):
        load_model(ModelConfig(path=str(path)), device="cpu")


def test_config_with_bias_is_refused(tmp_path):
    config = internlm2_config(bias=True)
    path = write_internlm2(tmp_path / "m", config, internlm2_state_dict(config), tokenizer=False)
    with pytest.raises(UserError, match="bias"):
        load_model(ModelConfig(path=str(path)), device="cpu")


def test_wqkv_size_mismatch_names_the_tensor(tmp_path):
    config = internlm2_config()
    sd = internlm2_state_dict(config)
    path = write_internlm2(tmp_path / "m", internlm2_config(num_key_value_heads=4), sd, False)
    with pytest.raises(UserError, match=r"model\.layers\.0\.attention\.wqkv\.weight.*4 KV heads"):
        load_model(ModelConfig(path=str(path)), device="cpu")


def test_missing_tensor_is_named(tmp_path):
    config = internlm2_config()
    sd = internlm2_state_dict(config)
    del sd["model.layers.1.ffn_norm.weight"]
    path = write_internlm2(tmp_path / "m", config, sd, tokenizer=False)
    with pytest.raises(UserError, match=r"model\.layers\.1\.post_attention_layernorm"):
        load_model(ModelConfig(path=str(path)), device="cpu")


def test_short_disk_removes_the_least_recently_used_other_copy(tmp_path, monkeypatch, capsys):
    """`tunesmith identity` on a 7B maps the base and the merged model: four times the model
    on disk stopped its last stage on a 64 GiB card machine. A new copy now makes room by
    removing other checkpoints' copies, least recently used first, and no more of them."""
    import os
    import shutil
    from collections import namedtuple

    from tunesmith.model import internlm2

    monkeypatch.setattr(internlm2, "cache_root", lambda: tmp_path / "cache")
    config = internlm2_config(vocab_size=512)
    models = {
        name: write_internlm2(
            tmp_path / name, config, internlm2_state_dict(config, seed=i), tokenizer=False
        )
        for i, name in enumerate("abc")
    }
    a, b = internlm2.llama_checkpoint(models["a"]), internlm2.llama_checkpoint(models["b"])
    os.utime(a, (1000, 1000))
    os.utime(b, (2000, 2000))
    assert internlm2.llama_checkpoint(models["a"]) == a  # used again: now b is the oldest

    def used() -> int:
        return sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*") if f.is_file())

    needed = (models["c"] / "model.safetensors").stat().st_size
    capacity = used() + int(needed * 1.05) - 1  # room for two copies, not three
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(
        shutil,
        "disk_usage",
        lambda p: usage(capacity, used(), capacity - used()) if "cache" in str(p) else real(p),
    )
    c = internlm2.llama_checkpoint(models["c"])
    assert (c / "config.json").is_file() and a.is_dir() and not b.exists()
    out = capsys.readouterr().out
    assert f"removing the cached Llama-layout copy of {models['b'].resolve()}" in out
    assert str(a) not in out
