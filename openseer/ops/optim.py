"""AdamW over tagged parameter groups (Loshchilov & Hutter 2019), as DINO trains its ViTs.

DINO (facebookresearch/dino ``main_dino.py``) uses ``torch.optim.AdamW`` with two groups: weights decayed
on a cosine schedule 0.04 -> 0.4 and biases/norms not decayed; its last layer is frozen during the first
epoch by dropping its gradients, so neither the layer nor its Adam moments (nor Adam's step count) move.

:func:`build_adamw` takes the :class:`~openseer.methods.base.ParamGroup` s of a method and returns a
:class:`FreezableAdamW`: plain torch AdamW, except that a group whose lr is exactly 0 (the contract's
freeze) is skipped entirely, as the reference's dropped gradients are. The loop sets each group's ``lr``
and ``weight_decay`` every step from the schedules and the groups' ``lr_scale`` / ``wd_scale``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class FreezableAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` that leaves groups with ``lr == 0`` untouched (parameter, moments and step)."""

    @torch.no_grad()
    def step(self, closure=None):
        frozen = [p for g in self.param_groups if g["lr"] == 0 for p in g["params"] if p.grad is not None]
        grads = [p.grad for p in frozen]
        for p in frozen:  # AdamW skips parameters without a gradient
            p.grad = None
        try:
            return super().step(closure)
        finally:
            for p, g in zip(frozen, grads, strict=True):
                p.grad = g


def build_adamw(groups: Iterable[Any], optim: Any) -> FreezableAdamW:
    """AdamW over ``groups`` (ParamGroups or optimizer group dicts); lr and weight decay are set by the loop.

    ``optim`` is the ``optim`` config section (``betas``, ``weight_decay``); each group starts at lr 0 and
    weight decay ``optim.weight_decay x wd_scale``.
    """
    dicts = [g.as_optimizer_group() if hasattr(g, "as_optimizer_group") else dict(g) for g in groups]
    for g in dicts:
        g["weight_decay"] = optim.weight_decay * g.get("wd_scale", 1.0)
    return FreezableAdamW(dicts, lr=0.0, betas=tuple(getattr(optim, "betas", (0.9, 0.999))))
