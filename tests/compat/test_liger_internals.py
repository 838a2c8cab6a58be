"""Liger's apply-to-instance entry point (tunesmith/compat/liger.py) still has the shape used.

Runs where liger-kernel is installed (the `gpu` extra; it needs triton, so not in CPU CI).
"""

from __future__ import annotations

import inspect

import pytest


def test_apply_to_instance_takes_the_model_and_kernel_switches():
    liger = pytest.importorskip("liger_kernel.transformers", reason="liger-kernel not installed")
    fn = getattr(liger, "_apply_liger_kernel_to_instance", None)
    where = "liger-kernel changed: update src/tunesmith/compat/liger.py (written against 0.8.5)"
    assert fn is not None, f"{where}: _apply_liger_kernel_to_instance is gone"
    params = inspect.signature(fn).parameters
    assert "model" in params and any(p.kind is p.VAR_KEYWORD for p in params.values()), where
    apply_llama = liger.apply_liger_kernel_to_llama
    from tunesmith.compat.liger import KERNELS

    accepted = inspect.signature(apply_llama).parameters
    assert set(KERNELS) <= set(accepted), f"{where}: kernel switches renamed"


def test_models_built_after_apply_keep_transformers_classes(monkeypatch):
    """liger-kernel 0.8.5's apply_liger_kernel_to_llama(model=...) patches the instance and also
    sets modeling_llama.LlamaRMSNorm / LlamaMLP to its own classes (and its RoPE function):
    `tunesmith identity`'s tuned_eval, loaded after training in the same process, was built
    of Liger modules. A stand-in doing the same checks that the class swaps are undone and the
    instance and the function patch stay. Runs without liger-kernel (CPU CI)."""
    import sys
    import types

    from transformers.models.llama import modeling_llama

    from tunesmith.compat import liger as liger_compat

    norm, mlp, rope = modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP, object()

    class LigerRMSNorm:
        pass

    def fake_apply(model, **kwargs):  # what apply_liger_kernel_to_llama does, in short
        monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", rope)
        monkeypatch.setattr(modeling_llama, "LlamaRMSNorm", LigerRMSNorm)
        monkeypatch.setattr(modeling_llama, "LlamaMLP", LigerRMSNorm)
        model.patched = True

    fake = types.ModuleType("liger_kernel.transformers")
    fake._apply_liger_kernel_to_instance = fake_apply
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    model = modeling_llama.LlamaForCausalLM.__new__(modeling_llama.LlamaForCausalLM)
    liger_compat.apply_to_instance(model)
    assert model.patched
    assert modeling_llama.LlamaRMSNorm is norm and modeling_llama.LlamaMLP is mlp
    assert modeling_llama.apply_rotary_pos_emb is rope


def test_real_liger_patches_the_instance_and_leaves_the_classes():
    """The same with liger-kernel itself (where it is installed: GPU machines)."""
    pytest.importorskip("liger_kernel.transformers", reason="liger-kernel not installed")
    from transformers import LlamaConfig
    from transformers.models.llama import modeling_llama

    from tunesmith.compat import liger as liger_compat

    norm, mlp = modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64,
    )  # fmt: skip
    model = modeling_llama.LlamaForCausalLM(config)
    liger_compat.apply_to_instance(model)
    assert "Liger" in model.model.norm.forward.__qualname__
    assert modeling_llama.LlamaRMSNorm is norm and modeling_llama.LlamaMLP is mlp
    later = modeling_llama.LlamaForCausalLM(config)
    assert "Liger" not in later.model.norm.forward.__qualname__
