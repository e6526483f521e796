"""Momentum schedule (BYOL sec. 3.2 / MoCo v3 adjust_moco_momentum) and the in-place EMA update."""

import math

import pytest
import torch
from torch import nn

from openseer.ops.ema import ema_update, frozen_copy, momentum_at, momentum_schedule


def test_schedule_matches_byol_formula():
    base, total = 0.996, 10
    sched = momentum_schedule(base, total)
    assert sched.dtype == torch.float64 and len(sched) == total
    for k in range(total):
        expected = 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2
        assert float(sched[k]) == pytest.approx(expected, abs=1e-12)
    assert float(sched[0]) == pytest.approx(base)
    assert all(sched[1:] >= sched[:-1]) and float(sched[-1]) < 1.0


def test_schedule_matches_moco_v3_fractional_epochs():
    # main_moco.py: m = 1 - 0.5 * (1 + cos(pi * epoch / epochs)) * (1 - moco_m), epoch = e + i / iters
    moco_m, epochs, iters = 0.99, 3, 4
    for e in range(epochs):
        for i in range(iters):
            ref = 1 - 0.5 * (1 + math.cos(math.pi * (e + i / iters) / epochs)) * (1 - moco_m)
            assert momentum_at(moco_m, e * iters + i, epochs * iters) == pytest.approx(ref, abs=1e-12)


def test_momentum_at_clamps_past_the_end_and_constant_when_final_equals_base():
    assert momentum_at(0.9, 50, 10) == float(momentum_schedule(0.9, 10)[-1])
    assert torch.all(momentum_schedule(0.5, 7, final=0.5) == 0.5)


def test_ema_update_in_place_on_parameters_only():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = frozen_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
        online[1].running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in target.named_parameters()}
    ema_update(target, online, 0.75)
    for name, p in target.named_parameters():
        expected = 0.75 * before[name] + 0.25 * dict(online.named_parameters())[name]
        torch.testing.assert_close(p, expected)
    assert torch.all(target[1].running_mean == 0)  # buffers keep their own statistics
    ema_update(target, online, 0.0)
    for a, b in zip(target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_ema_update_refuses_modules_that_differ():
    with pytest.raises(KeyError):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 2, bias=False), 0.9)
    with pytest.raises(KeyError):
        ema_update(nn.Linear(2, 2, bias=False), nn.Linear(2, 2), 0.9)
