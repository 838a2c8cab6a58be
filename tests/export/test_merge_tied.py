"""Merging adapters that train the head or embeddings of a model whose head is tied (SmolLM2)."""

import json

import pytest
import torch
from export_helpers import logits_of, random_adapter

from tunesmith.cli.main import main


@pytest.fixture(scope="module")
def tied_model_dir(tmp_path_factory, smollm_tokenizer):
    """A tiny random Llama whose lm_head is tied to its embeddings (stored once)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    out = tmp_path_factory.mktemp("tied")
    LlamaForCausalLM(config).save_pretrained(out)
    smollm_tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("trained", [["lm_head"], ["embed_tokens"], ["embed_tokens", "lm_head"]])
def test_tied_head_or_embeddings_merge_untied_with_base_plus_adapter_logits(
    tied_model_dir, smollm_tokenizer, tmp_path, trained
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = random_adapter(
        tied_model_dir, tmp_path / "adapter", target_modules=["q_proj"], modules_to_save=trained
    )
    base = AutoModelForCausalLM.from_pretrained(tied_model_dir)
    expected = logits_of(PeftModel.from_pretrained(base, adapter), smollm_tokenizer)
    out = tmp_path / "merged"
    assert (
        main(["convert", "merge", str(tied_model_dir), str(adapter), str(out), "--dtype", "fp32"])
        == 0
    )
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    merged = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits_of(merged, smollm_tokenizer), expected, atol=1e-4, rtol=1e-4)


def test_an_adapter_tensor_that_lands_nowhere_stops_the_merge(tied_model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    adapter = random_adapter(tied_model_dir, tmp_path / "adapter", target_modules=["q_proj"])
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["base_model.model.model.no_such_module.weight"] = torch.zeros(2, 2)
    save_file(tensors, weights)
    out = tmp_path / "merged"
    assert main(["convert", "merge", str(tied_model_dir), str(adapter), str(out)]) == 2
    assert "model.no_such_module.weight" in capsys.readouterr().err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temp dir left
