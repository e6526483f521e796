"""Momentum (EMA) targets: a target network that trails the online one (BYOL, MoCo v3, DINO).

BYOL (Grill et al. 2020, eq. 1 and sec. 3.2): after each optimizer step the target parameters become
``xi <- tau * xi + (1 - tau) * theta``, with ``tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`` rising from
``tau_base`` at step 0 towards 1 at the last step K. MoCo v3 (facebookresearch/moco-v3 ``main_moco.py``
``adjust_moco_momentum``) uses the same cosine in fractional epochs, ``epoch + i / iters_per_epoch`` over
``epochs``, which is k / K in steps; DINO's teacher momentum (``cosine_scheduler(0.996, 1, ...)``) is the same
array. Only parameters follow the EMA; buffers (batch-norm running statistics) of the target keep their own,
updated by the target's forward passes, as in the MoCo v3 and BYOL references.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from openseer.ops.schedules import cosine_schedule


def momentum_schedule(base: float, total_steps: int, final: float = 1.0) -> torch.Tensor:
    """Per-step EMA momentum ``final - (final - base) (cos(pi k / K) + 1) / 2`` for k = 0..K-1 (float64).

    ``base`` = 0.996 (BYOL, DINO) or 0.99 (MoCo v3); ``final`` = 1. A constant momentum is ``final == base``.
    """
    return cosine_schedule(base, final, total_steps)


def momentum_at(base: float, step: int, total_steps: int, final: float = 1.0) -> float:
    """One value of :func:`momentum_schedule` (steps past the end keep the last value)."""
    k = min(max(step, 0), max(total_steps - 1, 0))
    return float(momentum_schedule(base, max(total_steps, 1), final)[k])


def frozen_copy(online: nn.Module) -> nn.Module:
    """A deep copy of ``online`` whose parameters take no gradient: the target network at step 0."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: every target parameter ``<- momentum * target + (1 - momentum) * online`` (BYOL eq. 1).

    Pairs parameters by name, so ``target`` must be a copy of ``online`` (e.g. :func:`frozen_copy`); frozen
    online parameters (a ViT's fixed patch projection) are averaged too and so stay equal. Works on sharded
    (FSDP2 DTensor) parameters as long as both modules are sharded alike: the update is elementwise.
    """
    pairs = dict(online.named_parameters())
    t_params, o_params = [], []
    for name, t in target.named_parameters():
        if name not in pairs:
            raise KeyError(f"ema_update: online module has no parameter {name!r}")
        t_params.append(t)
        o_params.append(pairs[name].detach())
    if len(t_params) != len(pairs):
        raise KeyError("ema_update: target and online modules hold different parameters")
    if not t_params:
        return
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)


@torch.no_grad()
def ema_update_pairs(pairs: Iterable[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """:func:`ema_update` of every (target, online) pair, e.g. a method's declared ``Method.ema_pairs()``."""
    for target, online in pairs:
        ema_update(target, online, momentum)
