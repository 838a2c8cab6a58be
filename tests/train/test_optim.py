import math

import pytest
import torch

from tunesmith.config.schema import TrainConfig
from tunesmith.train.optim import build_optimizer, build_scheduler, lr_factor, warmup_steps_for


def test_warmup_rises_linearly_to_the_peak():
    assert lr_factor(0, total_steps=100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(4, total_steps=100, warmup_steps=10) == pytest.approx(0.5)
    assert lr_factor(9, total_steps=100, warmup_steps=10) == pytest.approx(1.0)


def test_cosine_falls_from_peak_to_zero_after_warmup():
    assert lr_factor(10, total_steps=100, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(55, total_steps=100, warmup_steps=10) == pytest.approx(0.5)
    expected = 0.5 * (1 + math.cos(math.pi * 80 / 90))
    assert lr_factor(90, total_steps=100, warmup_steps=10) == pytest.approx(expected)
    assert lr_factor(100, total_steps=100, warmup_steps=10) == pytest.approx(0.0)


def test_warmup_steps_are_the_ratio_of_total_steps():
    assert warmup_steps_for(1000, 0.03) == 30
    assert warmup_steps_for(10, 0.0) == 0


def test_scheduler_sets_the_optimizer_lr_per_step():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    cfg = TrainConfig(lr=1e-3, warmup_ratio=0.25)
    optimizer = build_optimizer([param], cfg)
    scheduler = build_scheduler(optimizer, total_steps=8, warmup_ratio=0.25)
    seen = []
    for _ in range(8):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [1e-3 * lr_factor(s, 8, 2) for s in range(8)]
    assert seen == pytest.approx(expected)
    assert seen[1] == pytest.approx(1e-3)  # the peak at the end of warmup


def test_weight_decay_skips_biases_and_norms():
    matrix = torch.nn.Parameter(torch.zeros(3, 3))
    bias = torch.nn.Parameter(torch.zeros(3))
    optimizer = build_optimizer([matrix, bias], TrainConfig(weight_decay=0.1, betas=(0.8, 0.9)))
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(matrix)] == 0.1
    assert decays[id(bias)] == 0.0
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.9)
