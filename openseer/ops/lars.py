"""LARS / LARC without clipping (You et al. 2017), as SwAV and SEER use it through apex's LARC(clip=False).

For a parameter p with gradient g, weight decay wd and trust coefficient eta:
    local_lr = eta * ||p|| / (||g|| + wd * ||p||)
    d = local_lr * (g + wd * p)                            (d = g when ||p|| or ||g|| is 0, as apex LARC)
    buf = momentum * buf + d;   p -= lr * buf
Groups with ``lars_exclude=True`` (biases, norm layers when excluded) get plain SGD with momentum and their
group's weight decay (0 from :func:`openseer.methods.base.split_groups`).
A group whose lr is exactly 0 is frozen: neither the parameter nor its momentum buffer changes (SwAV drops
the prototypes' gradient during the first iterations; here that is a schedule on the group's lr).
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with SGD momentum; see the module docstring for the update."""

    def __init__(
        self,
        params,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            lars_exclude=False,
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
            if lr == 0:
                continue
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd = group["weight_decay"]
            if not group["lars_exclude"]:
                p_norms = torch._foreach_norm(params)
                g_norms = torch._foreach_norm(grads)
                updates = []
                for p, g, pn, gn in zip(params, grads, p_norms, g_norms, strict=True):
                    trust = group["trust_coefficient"] * pn / (gn + wd * pn + group["eps"])
                    adapt = (pn > 0) & (gn > 0)  # apex LARC: no decay and no scaling when a norm is 0
                    updates.append(torch.where(adapt, (g + wd * p) * trust, g))
            else:
                updates = [g + wd * p if wd else g for p, g in zip(params, grads, strict=True)]
            for p, d in zip(params, updates, strict=True):
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.detach().clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-lr)
        return loss
