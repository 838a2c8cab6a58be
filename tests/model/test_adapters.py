"""apply_lora: all-linear targets, DoRA, gradient checkpointing, QLoRA training on CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.config.schema import LoraConfig, ModelConfig, QuantizationConfig
from tunesmith.model.adapters import apply_lora
from tunesmith.model.load import load_model


def _lora_modules(model) -> set[str]:
    return {name for name, module in model.named_modules() if hasattr(module, "lora_A")}


def _tiny_llama(tie: bool) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


def _train_step(model, steps: int = 1) -> tuple[float, float]:
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (2, 16))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = model(input_ids=ids, labels=ids).loss
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        after = model(input_ids=ids, labels=ids).loss
    return before.item(), after.item()


@pytest.mark.parametrize("tie", [False, True])
def test_all_linear_never_targets_the_head(tie):
    model = apply_lora(_tiny_llama(tie), LoraConfig(r=4))
    targeted = _lora_modules(model)
    assert len(targeted) == 2 * 7  # q k v o gate up down per layer
    assert not any("lm_head" in name or "embed" in name for name in targeted)


def test_all_linear_excludes_a_head_named_like_a_decoder_linear():
    model = _tiny_llama(tie=False)
    # a head named like a decoder linear: suffix matching would catch it, full names must not
    model.model.layers[0].mlp.output = torch.nn.Linear(32, 32)
    model.output = model.lm_head
    del model.lm_head
    model.get_output_embeddings = lambda: model.output
    targeted = _lora_modules(apply_lora(model, LoraConfig(r=4)))
    assert not any(name.endswith(".model.output") for name in targeted)  # the head
    assert any(name.endswith("layers.0.mlp.output") for name in targeted)


def test_only_lora_weights_are_trainable():
    model = apply_lora(_tiny_llama(False), LoraConfig(r=4, lora_alpha=8))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in name for name in trainable)


def test_explicit_target_modules_are_used():
    model = apply_lora(_tiny_llama(False), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    targeted = _lora_modules(model)
    assert {name.rsplit(".", 1)[-1] for name in targeted} == {"q_proj", "v_proj"}


def test_dora_adds_magnitude_vectors():
    model = apply_lora(_tiny_llama(False), LoraConfig(r=4, use_dora=True))
    assert any("lora_magnitude_vector" in name for name, _ in model.named_parameters())


def test_gradient_checkpointing_is_non_reentrant_and_trains():
    model = apply_lora(
        _tiny_llama(False), LoraConfig(r=4, dropout=0.0), gradient_checkpointing=True
    )
    base = model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    assert base.model.layers[0]._gradient_checkpointing_func.keywords["use_reentrant"] is False
    model.train()
    before, after = _train_step(model)
    assert after < before


def test_qlora_on_cpu_trains(tiny_model_dir):
    import bitsandbytes as bnb

    model = load_model(
        ModelConfig(path=str(tiny_model_dir)), quantization=QuantizationConfig(), device="cpu"
    )
    model = apply_lora(
        model, LoraConfig(r=8, lora_alpha=16, dropout=0.0), gradient_checkpointing=True
    )
    base_q = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base_q, bnb.nn.Linear4bit)
    model.train()
    before, after = _train_step(model, steps=3)
    assert after < before
    # the norms and head are not upcast or unfrozen
    head = model.get_base_model().lm_head
    assert not head.weight.requires_grad


def test_8bit_lora_on_cpu_backpropagates(tiny_model_dir):
    import bitsandbytes as bnb

    model = load_model(
        ModelConfig(path=str(tiny_model_dir)), quantization=QuantizationConfig(bits=8), device="cpu"
    )
    model = apply_lora(model, LoraConfig(r=4, dropout=0.0))
    assert isinstance(
        model.get_base_model().model.layers[0].mlp.up_proj.base_layer, bnb.nn.Linear8bitLt
    )
    ids = torch.randint(3, 1000, (1, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
