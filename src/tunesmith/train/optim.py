"""AdamW and the learning-rate schedule: linear warmup, then cosine to zero."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from tunesmith.config.schema import TrainConfig


def build_optimizer(params: list[torch.nn.Parameter], train_cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and norm weights (1-D)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": train_cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    kwargs = dict(lr=train_cfg.lr, betas=tuple(train_cfg.betas))
    # The fused kernel runs on CPU and CUDA for float tensors; foreach is the fallback.
    if all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    return round(total_steps * warmup_ratio)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak lr for the optimizer step `step` (0-based).

    Warmup rises linearly so the last warmup step runs at the peak (the first step
    is not wasted at lr 0); cosine then falls to zero at `total_steps`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> LambdaLR:
    warmup = warmup_steps_for(total_steps, warmup_ratio)
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup))
