"""Per-step schedules as arrays (dino ``cosine_scheduler``): lr, weight decay, freezes are just values per step."""

from __future__ import annotations

import math

import torch


def cosine_schedule(
    peak: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> torch.Tensor:
    """Linear warm-up from ``warmup_start`` to ``peak`` over ``warmup_steps``, then cosine to ``final``.

    Value at step i (0-based) of the cosine part, n = total - warmup:
    ``final + 0.5 (peak - final) (1 + cos(pi i / n))``  (Loshchilov & Hutter 2017, without restarts).
    Returned as float64 tensor of length ``total_steps``.
    """
    warmup_steps = min(warmup_steps, total_steps)
    warm = (
        torch.linspace(warmup_start, peak, warmup_steps + 1, dtype=torch.float64)[:-1]
        if warmup_steps
        else torch.empty(0, dtype=torch.float64)
    )
    n = total_steps - warmup_steps
    i = torch.arange(n, dtype=torch.float64)
    cos = final + 0.5 * (peak - final) * (1 + torch.cos(math.pi * i / max(n, 1)))
    return torch.cat([warm, cos])


def step_function_schedule(total_steps: int, switch_step: int, before: float, after: float) -> torch.Tensor:
    """``before`` for steps < switch_step, ``after`` from then on (e.g. a prototype lr multiplier 0 -> 1)."""
    out = torch.full((total_steps,), after, dtype=torch.float64)
    out[: min(switch_step, total_steps)] = before
    return out
