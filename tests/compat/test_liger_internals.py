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
