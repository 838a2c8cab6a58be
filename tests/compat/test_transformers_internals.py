"""The transformers internals in tunesmith/compat/transformers.py still have the shape used there.

A failure here means a transformers release changed one of them: update that module (written
against transformers 5.24) and the version range in pyproject.toml.
"""

from __future__ import annotations

import inspect

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from tunesmith.compat import transformers as hf_compat

WHERE = f"transformers {transformers.__version__}: update src/tunesmith/compat/transformers.py"


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_layer_checkpointing_flag_is_what_the_layers_read():
    model = tiny_llama()
    hf_compat.enable_activation_checkpointing(model)
    layers = hf_compat.checkpointed_layers(model)
    assert len(layers) == 3, f"{WHERE}: GradientCheckpointingLayer no longer marks decoder layers"
    assert all(hf_compat.layer_checkpointing(layer) for layer in layers), (
        f"{WHERE}: checkpointing no longer sets each layer's `gradient_checkpointing` flag"
    )
    source = inspect.getsource(transformers.GradientCheckpointingLayer)
    assert "if self.gradient_checkpointing and self.training" in source, (
        f"{WHERE}: GradientCheckpointingLayer no longer reads `gradient_checkpointing`"
    )


def test_gguf_models_refuse_to_save_through_hf_quantizer():
    source = inspect.getsource(PreTrainedModel.save_pretrained)
    assert "hf_quantizer" in source, (
        f"{WHERE}: save_pretrained no longer consults `hf_quantizer`; drop_gguf_quantizer may "
        "not make a GGUF-loaded model savable any more"
    )
    model = tiny_llama()
    model.config.quantization_config = {"quant_method": "gguf"}
    hf_compat.drop_gguf_quantizer(model)
    assert model.hf_quantizer is None and not hasattr(model.config, "quantization_config")


def test_flash_attention_mask_is_registered_like_flash_attention():
    from transformers import AttentionMaskInterface

    mask_fn = hf_compat.flash_attention_mask()
    assert callable(mask_fn), f"{WHERE}: masking_utils.flash_attention_mask is gone"
    assert AttentionMaskInterface._global_mapping.get("flash_attention_2") is mask_fn, (
        f"{WHERE}: flash attention no longer uses masking_utils.flash_attention_mask"
    )


def test_sentencepiece_proto_converts_to_a_tokenizer():
    proto = hf_compat.sentencepiece_model_proto()
    proto.trainer_spec.model_type = 2  # BPE
    proto.trainer_spec.unk_piece = "<unk>"
    proto.trainer_spec.byte_fallback = False
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.escape_whitespaces = True
    for piece, kind, score in [("<unk>", 2, 0.0), ("<s>", 3, 0.0), ("</s>", 3, 0.0),
                               ("\u2581", 1, -1.0), ("a", 1, -2.0), ("b", 1, -3.0),
                               ("\u2581a", 1, -0.5), ("ab", 1, -0.7)]:  # fmt: skip
        proto.pieces.add(piece=piece, type=kind, score=score)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    tokenizer = hf_compat.spm_tokenizer(proto, vocab)
    ids = tokenizer.encode("a ab", add_special_tokens=False).ids
    # BPE by piece score: "▁a" (-0.5) merges before "ab" (-0.7)
    assert [proto.pieces[i].piece for i in ids] == ["\u2581a", "\u2581a", "b"], (
        f"{WHERE}: SpmConverter.build_tokenizer_from_spm_proto changed its output"
    )


def test_sdpa_is_registered_under_its_name():
    """model/fast.py falls back to the documented sdpa_attention_forward: the same function
    transformers runs for attn_implementation="sdpa", with [batch, seq, heads, dim] output."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    assert AttentionInterface._global_mapping.get("sdpa") is sdpa_attention_forward, (
        f"{WHERE}: 'sdpa' no longer runs integrations.sdpa_attention.sdpa_attention_forward"
    )
    q = torch.randn(1, 2, 3, 4)
    out, _ = sdpa_attention_forward(torch.nn.Module(), q, q, q, None, is_causal=True)
    assert out.shape == (1, 3, 2, 4), f"{WHERE}: the sdpa attention function changed its layout"


def test_final_hidden_states_are_what_the_output_head_reads():
    model = tiny_llama().eval()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    full = model(input_ids=ids).logits
    out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
    assert out.logits.shape[1] == 1, f"{WHERE}: logits_to_keep no longer limits the logits"
    hidden = hf_compat.final_hidden_states(out)
    torch.testing.assert_close(
        model.lm_head(hidden), full, msg=f"{WHERE}: hidden_states[-1] is not the normed state"
    )


def test_llama3_rope_frequencies_are_what_the_model_uses():
    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64},
    )  # fmt: skip
    model_freqs = LlamaForCausalLM(config).model.rotary_emb.inv_freq
    freqs = hf_compat.rope_inv_freq(config, "llama3")
    assert freqs.shape == (8,), f"{WHERE}: ROPE_INIT_FUNCTIONS['llama3'] changed its output"
    assert torch.allclose(freqs.float(), model_freqs.float()), (
        f"{WHERE}: ROPE_INIT_FUNCTIONS['llama3'] no longer gives the model's RoPE frequencies"
    )
