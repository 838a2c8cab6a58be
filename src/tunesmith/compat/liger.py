"""liger-kernel's entry point tunesmith uses (written against liger-kernel 0.8.5).

`liger_kernel.transformers._apply_liger_kernel_to_instance(model=..., **kwargs)` patches one
model instance whatever its architecture (transformers' Trainer calls it for `use_liger_kernel`).
Liger exports it from `liger_kernel.transformers` (its `__all__`) but the name carries a leading
underscore, so it lives here. It looks the model type up in Liger's own table, passes each apply
function only the kwargs it accepts, and logs (at INFO) when Liger has no kernels for the type.
"""

from __future__ import annotations

from torch import nn

KERNELS = {
    "rope": True,
    "rms_norm": True,
    "swiglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": True,  # never materialises batch x seq x vocab logits
}


def available() -> bool:
    """True where liger-kernel (and the triton it needs) imports."""
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


def apply_to_instance(model: nn.Module, **kernels: bool) -> None:
    """Liger's kernels (default: KERNELS) on `model`, a transformers PreTrainedModel.

    Liger's apply functions also replace classes in the model's transformers module
    (`apply_liger_kernel_to_llama`: `LlamaRMSNorm`, `LlamaMLP`), so every model of that type
    built later in the process was made of Liger's modules: in `tunesmith identity` on a GPU,
    the merged model tuned_eval loads after training, while base_eval ran transformers' own.
    Those class swaps are undone here; `model`'s own modules stay patched (Liger binds their
    forward on the instance). Replaced functions stay (its RoPE: the same maths, looked up
    when the attention runs, so `model` needs it).
    """
    import sys

    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    module = sys.modules.get(type(model).__module__)
    classes = {k: v for k, v in vars(module).items() if isinstance(v, type)} if module else {}
    _apply_liger_kernel_to_instance(model=model, **(kernels or KERNELS))
    for name, cls in classes.items():
        if vars(module).get(name) is not cls:
            setattr(module, name, cls)
