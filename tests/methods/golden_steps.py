"""Shared pieces of the golden-step tests of the LARS methods (``test_<method>_golden.py``), modelled on
``test_swav_golden.py``: a method's paper preset, shrunk to a tiny RegNet, trains 3 steps through the training
loop's own ``build_trainer`` and ``train_step``; a copy of the same initial model trains 3 steps under the
reference's step re-written in plain torch from its source text; losses and every parameter and buffer must
agree.

:class:`ReferenceLARS` is the ``LARS`` class of facebookresearch/vicreg ``main_vicreg.py`` as written there
(facebookresearch/barlowtwins ``main.py`` holds the same update with boolean filters that mean ``p.ndim == 1``,
and facebookresearch/moco-v3 ``optimizer.py`` the same with ``p.ndim > 1`` hard-wired).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch

from openseer.config import derive, load_config
from openseer.methods import METHODS
from openseer.methods.base import RunInfo
from openseer.models.backbone import build_backbone
from openseer.train import build_trainer, train_step

STEPS = 3
BATCH = 8
STEPS_PER_EPOCH = 2  # 16 images at batch 8; 3 epochs = 6 steps; 1 warm-up epoch: steps 0-1 warm up, 2 is cosine
TINY = [
    "model.regnet.depth=6",
    "model.regnet.w0=8",
    "model.regnet.wa=8.0",
    "model.regnet.wm=2.0",
    "model.regnet.group_size=4",
    "model.channels_last=false",
    "aug.global_size=32",
    f"train.batch_size={BATCH}",
    "train.epochs=3",
    "train.precision=fp32",
    "optim.warmup_epochs=1",
    "optim.weight_decay=0.01",  # large enough that decay, and where it enters LARS, shows in 3 steps
]


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """The references' flattened off-diagonal trick (barlowtwins main.py, vicreg main_vicreg.py), written here
    independently of openseer.ops.matrix."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def exclude_bias_and_norm(p: torch.Tensor) -> bool:
    """vicreg / barlowtwins: biases and batch-norm parameters are the 1-d ones."""
    return p.ndim == 1


class ReferenceLARS(torch.optim.Optimizer):
    """facebookresearch/vicreg ``main_vicreg.py`` ``LARS``: weight decay added to the gradient first, then the
    trust ratio ``eta ||p|| / ||g + wd p||`` (1 when a norm is 0); ``mu = momentum mu + update`` from zeros;
    ``p -= lr mu``. A filter that returns True for a parameter skips decay (or adaptation) for it."""

    def __init__(
        self, params, lr, weight_decay=0, momentum=0.9, eta=0.001, weight_decay_filter=None, lars_adaptation_filter=None
    ):
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            eta=eta,
            weight_decay_filter=weight_decay_filter,
            lars_adaptation_filter=lars_adaptation_filter,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if g["weight_decay_filter"] is None or not g["weight_decay_filter"](p):
                    dp = dp.add(p, alpha=g["weight_decay"])
                if g["lars_adaptation_filter"] is None or not g["lars_adaptation_filter"](p):
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(
                        param_norm > 0.0, torch.where(update_norm > 0, (g["eta"] * param_norm / update_norm), one), one
                    )
                    dp = dp.mul(q)
                param_state = self.state[p]
                if "mu" not in param_state:
                    param_state["mu"] = torch.zeros_like(p)
                mu = param_state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def adjust_learning_rate(
    base_lr: float, batch_size: int, epochs: int, warmup_epochs: int, steps_per_epoch: int, step: int
) -> float:
    """barlowtwins / vicreg ``adjust_learning_rate`` (their warm-up is 10 epochs; ``warmup_epochs`` here): linear
    warm-up from 0, then a cosine from ``base_lr * batch / 256`` to 1/1000 of it."""
    max_steps = epochs * steps_per_epoch
    warmup_steps = warmup_epochs * steps_per_epoch
    base_lr = base_lr * batch_size / 256
    if step < warmup_steps:
        lr = base_lr * step / warmup_steps
    else:
        step -= warmup_steps
        max_steps -= warmup_steps
        q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
        end_lr = base_lr * 0.001
        lr = base_lr * q + end_lr * (1 - q)
    return lr


def tiny_config(preset: str, extra: list[str]):
    return load_config(preset, TINY + extra)


def two_views(cfg, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(BATCH, 3, cfg.aug.global_size, cfg.aug.global_size, generator=g) for _ in range(2)]


def run_both(cfg, make_reference: Callable, crops: Callable = two_views):
    """Build the preset's method, copy it for the reference, train both STEPS steps on the same crops.

    ``make_reference(model, cfg, derived)`` returns an object whose ``step(step, crops)`` returns the loss.
    Returns (initial state, reference model, openseer model, [(reference loss, openseer loss)] per step).
    """
    derived = derive(cfg, dataset_size=STEPS_PER_EPOCH * BATCH)
    assert derived.steps_per_epoch == STEPS_PER_EPOCH
    torch.manual_seed(0)
    model = METHODS[cfg.method].build(cfg, build_backbone(cfg.model), RunInfo.of(cfg, derived))
    reference = copy.deepcopy(model)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    ref = make_reference(reference, cfg, derived)
    trainer = build_trainer(cfg, model, derived, torch.device("cpu"))
    losses = []
    for step in range(STEPS):
        views = crops(cfg, step)
        ref_loss = ref.step(step, [v.clone() for v in views])
        result = train_step(trainer, [views], step, step // STEPS_PER_EPOCH)
        assert result.finite
        losses.append((ref_loss, result.loss))
    return initial, reference, model, losses


def assert_same_training(initial: dict, reference, model, losses, rel_update: float = 1e-3, atol: float = 1e-6) -> None:
    """Equal losses; every parameter and buffer equal; every trained parameter moved, and by the same update.

    ``atol``: 1e-6, or 1e-5 at SwAV's lr of ~4.8 (``test_swav_golden.py``), where float32 rounding (norms and
    sums reduced in another order) moves parameters by a few 1e-6 in 3 steps; a wrong update moves them by
    1e-3 and more, and the relative update check stays at ``rel_update``."""
    for step, (ref_loss, loss) in enumerate(losses):
        assert math.isclose(loss, ref_loss, rel_tol=1e-5, abs_tol=1e-6), (step, loss, ref_loss)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    ref_state = {k: v for k, v in reference.state_dict().items() if torch.is_tensor(v) and v.is_floating_point()}
    state = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v) and v.is_floating_point()}
    assert ref_state.keys() == state.keys()
    for name, value in state.items():
        torch.testing.assert_close(value, ref_state[name], rtol=1e-5, atol=atol, msg=f"{name} after {STEPS} steps")
        if name in trained:
            moved = ref_state[name] - initial[name]
            assert moved.abs().max() > 0, f"{name} did not change in the reference"
            diff = ((value - initial[name]) - moved).norm() / moved.norm()
            assert diff < rel_update, f"{name}: update differs from the reference's by {float(diff):.2e} (relative)"


def changed_updates(initial: dict, a, b, names: list[str], rel: float = 1e-2) -> list[str]:
    """The names among ``names`` whose updates (value - initial) differ between two models by more than ``rel``
    of the update's norm."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    out = []
    for n in names:
        ua, ub = pa[n].detach() - initial[n], pb[n].detach() - initial[n]
        if (ua - ub).norm() > rel * ua.norm():
            out.append(n)
    return out
