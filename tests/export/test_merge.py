"""`tunesmith convert merge`: base + adapter -> a standalone model that vanilla transformers loads."""

import json

import pytest
import torch
from export_helpers import logits_of, random_adapter

from tunesmith.cli.main import main


def _merge(base, adapter, out, *flags) -> int:
    return main(["convert", "merge", str(base), str(adapter), str(out), *flags])


def _peft_logits(base_dir, adapter_dir, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    return logits_of(PeftModel.from_pretrained(base, adapter_dir), tokenizer)


def _merged_logits(out, tokenizer):
    from transformers import AutoModelForCausalLM

    return logits_of(AutoModelForCausalLM.from_pretrained(out), tokenizer)


@pytest.mark.parametrize(
    "lora",
    [
        {},
        {"use_dora": True},
        {"use_rslora": True, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
    ],
    ids=["lora", "dora", "rslora-some-modules", "modules-to-save"],
)
def test_streamed_merge_matches_base_plus_adapter_logits(
    tiny_model_dir, smollm_tokenizer, tmp_path, lora, capsys
):
    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter", **lora)
    expected = _peft_logits(tiny_model_dir, adapter, smollm_tokenizer)
    base_logits = logits_of(
        __import__("transformers").AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        smollm_tokenizer,
    )
    assert not torch.allclose(expected, base_logits, atol=1e-3)
    assert _merge(tiny_model_dir, adapter, tmp_path / "merged", "--dtype", "fp32") == 0
    assert "peft" not in capsys.readouterr().out  # the streaming path did it
    torch.testing.assert_close(
        _merged_logits(tmp_path / "merged", smollm_tokenizer), expected, atol=1e-4, rtol=1e-4
    )


def test_merge_writes_shards_with_an_index(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    assert _merge(tiny_model_dir, adapter, tmp_path / "merged", "--max-shard-size", "2MB") == 0
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    names = set()
    for shard in shards:
        with safe_open(tmp_path / "merged" / shard, "pt") as f:
            names |= set(f.keys())
    assert names == set(index["weight_map"])
    assert not any("lora" in n for n in names)


def test_merged_model_answers_chat_through_pipeline(tiny_model_dir, tmp_path):
    from transformers import pipeline

    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    assert _merge(tiny_model_dir, adapter, tmp_path / "merged") == 0
    chat = pipeline("text-generation", model=str(tmp_path / "merged"), device="cpu")
    messages = [{"role": "user", "content": "Hello!"}]
    result = chat(messages, max_new_tokens=5, do_sample=False)
    conversation = result[0]["generated_text"]
    assert conversation[:-1] == messages
    assert conversation[-1]["role"] == "assistant" and conversation[-1]["content"]


def test_generation_config_stops_at_end_of_turn(tiny_model_dir, smollm_tokenizer, tmp_path):
    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    assert _merge(tiny_model_dir, adapter, tmp_path / "merged") == 0
    config = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    assert smollm_tokenizer.convert_tokens_to_ids("<|im_end|>") in config["eos_token_id"]
    tokenizer_config = json.loads((tmp_path / "merged" / "tokenizer_config.json").read_text())
    assert (
        "chat_template" in tokenizer_config
        or (tmp_path / "merged" / "chat_template.jinja").exists()
    )


def test_dtype_auto_keeps_the_base_dtype_and_bf16_is_honoured(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    assert _merge(tiny_model_dir, adapter, tmp_path / "auto") == 0
    assert _merge(tiny_model_dir, adapter, tmp_path / "bf16", "--dtype", "bf16") == 0
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["dtype"] == "float32"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert model.dtype == torch.bfloat16


def test_unsupported_adapter_falls_back_to_peft_merge(
    tiny_model_dir, smollm_tokenizer, tmp_path, capsys
):
    adapter = random_adapter(
        tiny_model_dir, tmp_path / "adapter", target_modules=["embed_tokens", "q_proj"]
    )
    expected = _peft_logits(tiny_model_dir, adapter, smollm_tokenizer)
    assert _merge(tiny_model_dir, adapter, tmp_path / "merged", "--dtype", "fp32") == 0
    assert "merge_and_unload" in capsys.readouterr().out
    torch.testing.assert_close(
        _merged_logits(tmp_path / "merged", smollm_tokenizer), expected, atol=1e-4, rtol=1e-4
    )


def test_qlora_adapter_merge_says_the_base_is_float(trained_lora, tiny_model_dir, tmp_path, capsys):
    import yaml

    config_path, work_dir, _ = trained_lora
    assert main(["convert", "pth_to_hf", str(config_path), str(work_dir), str(tmp_path / "a")]) == 0
    saved = yaml.safe_load((tmp_path / "a" / "tunesmith_config.yaml").read_text())
    saved["quantization"] = {"bits": 4}
    (tmp_path / "a" / "tunesmith_config.yaml").write_text(yaml.safe_dump(saved))
    assert _merge(tiny_model_dir, tmp_path / "a", tmp_path / "merged") == 0
    out = capsys.readouterr().out
    assert "4-bit" in out and "float weights" in out


@pytest.mark.parametrize("change", [{"num_hidden_layers": 3}, {"hidden_size": 32}])
def test_adapter_for_another_base_is_a_user_error(tiny_model_dir, tmp_path, capsys, change):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    for key, value in change.items():
        setattr(config, key, value)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "other")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "other")
    adapter = random_adapter(tmp_path / "other", tmp_path / "adapter")
    assert _merge(tiny_model_dir, adapter, tmp_path / "merged") == 2
    assert "another base model" in capsys.readouterr().err
    assert not (tmp_path / "merged").exists()
    assert not list(tmp_path.glob(".merged-*"))  # no half-written output left behind


def test_merge_refuses_a_non_empty_output_dir(tiny_model_dir, tmp_path, capsys):
    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "x").write_text("keep")
    assert _merge(tiny_model_dir, adapter, tmp_path / "merged") == 2
    assert (tmp_path / "merged" / "x").read_text() == "keep"


@pytest.fixture
def internlm2_base(tmp_path, smollm_tokenizer, monkeypatch):
    """A tiny random checkpoint in the original InternLM2 layout (fused wqkv), plus a tokenizer."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.model import internlm2

    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    config = LlamaConfig(
        vocab_size=len(smollm_tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
        eos_token_id=smollm_tokenizer.eos_token_id, pad_token_id=smollm_tokenizer.pad_token_id,
        bos_token_id=smollm_tokenizer.bos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    llama = LlamaForCausalLM(config)
    state, config_dict = internlm2.llama_to_internlm2(llama.state_dict(), config)
    base = tmp_path / "internlm2"
    base.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, base / "model.safetensors")
    (base / "config.json").write_text(json.dumps(config_dict))
    (base / "modeling_internlm2.py").write_text("# the remote code InternLM ships\n")
    smollm_tokenizer.save_pretrained(base)
    return base


@pytest.mark.parametrize("fmt", ["auto", "llama"])
def test_internlm2_merge_keeps_layout_and_matches_logits(
    internlm2_base, smollm_tokenizer, tmp_path, fmt
):
    from safetensors import safe_open

    from tunesmith.config.schema import ModelConfig
    from tunesmith.model import internlm2
    from tunesmith.model.load import load_model

    llama_form = internlm2.llama_checkpoint(internlm2_base)
    adapter = random_adapter(llama_form, tmp_path / "adapter", tokenizer_dir=internlm2_base)
    expected = _peft_logits(llama_form, adapter, smollm_tokenizer)
    out = tmp_path / "merged"
    assert _merge(internlm2_base, adapter, out, "--format", fmt) == 0
    config = json.loads((out / "config.json").read_text())
    with safe_open(out / "model.safetensors", "pt") as f:
        names = set(f.keys())
    if fmt == "auto":
        assert config["model_type"] == "internlm2"
        assert "model.layers.0.attention.wqkv.weight" in names
        assert (out / "modeling_internlm2.py").exists()
        merged = load_model(ModelConfig(path=str(out)), device="cpu")
    else:
        assert config["model_type"] == "llama"
        assert "model.layers.0.self_attn.q_proj.weight" in names
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits_of(merged, smollm_tokenizer), expected, atol=1e-4, rtol=1e-4)


def test_internlm2_format_needs_an_internlm2_base(tiny_model_dir, tmp_path, capsys):
    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    assert _merge(tiny_model_dir, adapter, tmp_path / "merged", "--format", "internlm2") == 2
    assert "InternLM2 base" in capsys.readouterr().err


def test_a_merge_into_another_base_than_the_adapters_says_so(tiny_model_dir, tmp_path, capsys):
    """Another base of the same shapes (a base model for its instruct variant) merged without
    a word: the output is a wrong model."""
    import shutil

    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    assert _merge(tiny_model_dir, adapter, tmp_path / "same") == 0
    assert "trained on" not in capsys.readouterr().out
    other = shutil.copytree(tiny_model_dir, tmp_path / "other-base")
    assert _merge(other, adapter, tmp_path / "merged") == 0
    out = capsys.readouterr().out
    assert f"note: the adapter was trained on {tiny_model_dir}, not {other}" in out
