"""LARS (You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional Networks") in the two forms the
self-supervised references use; ``variant`` picks one. For a parameter p with gradient g, weight decay wd and
trust coefficient eta:

``"larc"`` - apex ``LARC(clip=False)`` (apex/parallel/LARC.py), as SwAV, SEER and DeepCluster-v2 use it:
    local_lr = eta * ||p|| / (||g|| + wd * ||p|| + eps)
    d = local_lr * (g + wd * p)                            (d = g when ||p|| or ||g|| is 0, as apex LARC)
``"lars"`` - the trust ratio of the decayed gradient, as facebookresearch/barlowtwins and vicreg ``LARS``,
moco-v3 ``optimizer.py``, google-research/simclr ``tf2/lars_optimizer.py`` and deepmind byol
``utils/optimizers.py`` write it:
    d = g + wd * p;   d = eta * ||p|| / ||d|| * d          (d unscaled when ||p|| or ||d|| is 0)
then, for both:
    buf = momentum * buf + d;   p -= lr * buf
Groups with ``lars_exclude=True`` (biases, norm layers when excluded) get plain SGD with momentum and their
group's weight decay (0 from :func:`openseer.methods.base.split_groups`).
A parameter without a gradient is skipped: neither it nor its momentum buffer changes (the training loop drops
the gradients of frozen groups, as SwAV drops the prototypes' during the first iterations). A group at lr 0
with gradients builds its momentum and does not move, as torch's SGD and the references' LARS (the first step
of a warm-up from 0).
"""

from __future__ import annotations

from typing import Literal

import torch

LARS_VARIANTS = ("larc", "lars")


def _larc_updates(params, grads, wd: float, eta: float, eps: float) -> list[torch.Tensor]:
    """apex LARC(clip=False): ``eta ||p|| / (||g|| + wd ||p|| + eps) * (g + wd p)``; g alone if a norm is 0."""
    p_norms = torch._foreach_norm(params)
    g_norms = torch._foreach_norm(grads)
    updates = []
    for p, g, pn, gn in zip(params, grads, p_norms, g_norms, strict=True):
        trust = eta * pn / (gn + wd * pn + eps)
        adapt = (pn > 0) & (gn > 0)  # apex LARC: no decay and no scaling when a norm is 0
        updates.append(torch.where(adapt, (g + wd * p) * trust, g))
    return updates


def _lars_updates(params, grads, wd: float, eta: float) -> list[torch.Tensor]:
    """barlowtwins / vicreg / moco-v3 / simclr / byol LARS: ``d = g + wd p`` scaled by ``eta ||p|| / ||d||``
    (by 1 when ||p|| or ||d|| is 0)."""
    decayed = [g + wd * p if wd else g for p, g in zip(params, grads, strict=True)]
    p_norms = torch._foreach_norm(params)
    d_norms = torch._foreach_norm(decayed)
    updates = []
    for d, pn, dn in zip(decayed, p_norms, d_norms, strict=True):
        trust = torch.where((pn > 0) & (dn > 0), eta * pn / dn, torch.ones_like(pn))
        updates.append(d * trust)
    return updates


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with SGD momentum; see the module docstring for the update and its two
    ``variant`` s (``"larc"``: SwAV/SEER/DeepCluster-v2; ``"lars"``: BYOL, MoCo v3, SimCLR, Barlow Twins, VICReg).
    """

    def __init__(
        self,
        params,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        variant: Literal["larc", "lars"] = "larc",
    ):
        if variant not in LARS_VARIANTS:
            raise ValueError(f"LARS variant {variant!r}: choose one of {', '.join(LARS_VARIANTS)}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            lars_exclude=False,
            variant=variant,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd = group["weight_decay"]
            if group["lars_exclude"]:
                updates = [g + wd * p if wd else g for p, g in zip(params, grads, strict=True)]
            elif group["variant"] == "lars":
                updates = _lars_updates(params, grads, wd, group["trust_coefficient"])
            else:
                updates = _larc_updates(params, grads, wd, group["trust_coefficient"], group["eps"])
            for p, d in zip(params, updates, strict=True):
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.detach().clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-lr)
        return loss
