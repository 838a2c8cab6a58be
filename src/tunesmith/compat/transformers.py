"""transformers internals tunesmith relies on (written against transformers 5.24, which is also
the declared lower bound: 5.3-5.23 convert the InternLM2 tokenizer differently, see tests/compat).

Each has no public equivalent:

- activation checkpointing is `activation_checkpointing_enable` in newer releases and
  `gradient_checkpointing_enable` (deprecated there) before;
- a GGUF-loaded model refuses `save_pretrained` while it carries its `hf_quantizer`, although
  its weights are de-quantised floats already;
- per-layer gradient checkpointing: the `gradient_checkpointing` flag of each
  `GradientCheckpointingLayer` (`gradient_checkpointing_enable` sets it on all layers);
- the InternLM2 tokenizer conversion: `SpmConverter.build_tokenizer_from_spm_proto` and
  transformers' own sentencepiece protobuf schema (no sentencepiece library involved);
- the flash-attention style mask function, registered for tunesmith's varlen attention;
- a boolean (batch, length) `logits_to_keep` (`modeling_utils.slice_logits_to_keep`, 5.24): the
  output head runs on the True positions only, flattened to (n, hidden);
- RoPE inverse frequencies of a scaled rope type (Llama 3.1's `llama3`), for the GGUF export:
  `modeling_rope_utils.ROPE_INIT_FUNCTIONS`, the table the models' rotary embeddings read;
- the last entry of `hidden_states` is the final-normed state the output head reads.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing on every decoder layer of a PreTrainedModel."""
    non_reentrant = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=non_reentrant)


def drop_gguf_quantizer(model: nn.Module) -> None:
    """Make a GGUF-loaded model savable: its weights are already de-quantised to float,
    but it refuses save_pretrained until the GGUF quantizer is dropped."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers whose `gradient_checkpointing` flag transformers reads, in order."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def set_layer_checkpointing(layer: nn.Module, enabled: bool) -> None:
    layer.gradient_checkpointing = enabled


def layer_checkpointing(layer: nn.Module) -> bool:
    return bool(layer.gradient_checkpointing)


def takes_logits_mask(model: nn.Module) -> bool:
    """True where `model.forward` takes a boolean (batch, length) `logits_to_keep`."""
    from transformers import modeling_utils

    forward = inspect.signature(model.forward).parameters
    return "logits_to_keep" in forward and hasattr(modeling_utils, "slice_logits_to_keep")


def cache_kwarg(model: nn.Module) -> str:
    """The name `model.forward` takes its KV cache under: `cache` (transformers 5.24 renamed
    `past_key_values`, which warns until 5.40) or `past_key_values` (models not renamed yet)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel
    forward = inspect.signature(base.forward).parameters
    return "cache" if "cache" in forward else "past_key_values"


def flash_attention_mask():
    """transformers' mask function for attention that takes no 4D mask (None, or 2D padding)."""
    from transformers.masking_utils import flash_attention_mask

    return flash_attention_mask


def spm_tokenizer(proto, vocab: dict[str, int]):
    """A `tokenizers.Tokenizer` from a parsed sentencepiece ModelProto and a piece -> id map."""
    from transformers.convert_slow_tokenizer import SpmConverter

    return SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)


def sentencepiece_model_proto():
    """An empty sentencepiece ModelProto (transformers' own protobuf schema)."""
    from transformers.utils import sentencepiece_model_pb2_new

    return sentencepiece_model_pb2_new.ModelProto()


def final_hidden_states(output) -> torch.Tensor:
    """The hidden states the output head reads (B, L, H), from a causal LM's output made with
    `output_hidden_states=True`: transformers 5 records each decoder layer's output and ends
    the tuple with the decoder's `last_hidden_state` (after the final norm), not the last
    layer's raw output. tests/compat checks lm_head(this) equals the model's logits."""
    return output.hidden_states[-1]


def rope_inv_freq(config, rope_type: str) -> torch.Tensor:
    """The inverse RoPE frequencies, shape [head_dim // 2], that a model built from `config`
    uses for `rope_type` (e.g. `llama3`), computed on the CPU as its rotary embedding does."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, _ = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    return inv_freq
