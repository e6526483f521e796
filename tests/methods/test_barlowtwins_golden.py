"""Golden test: openseer's Barlow Twins step equals facebookresearch/barlowtwins ``main.py``'s step.

The reference, re-written in plain torch from the text of ``main.py``:

* ``BarlowTwins.forward``: one view at a time through backbone and projector, ``c = bn(z1).T @ bn(z2)`` with
  ``bn = BatchNorm1d(affine=False)`` (training mode: biased variance, eps 1e-5), ``c.div_(batch_size)`` (the
  global batch), ``on_diag = (diag(c) - 1)^2`` summed, ``off_diag = off_diagonal(c)^2`` summed,
  ``loss = on_diag + lambd * off_diag`` (one process: the ``all_reduce(c)`` is the identity);
* the optimizer: ``param_weights`` (ndim > 1) and ``param_biases`` (ndim 1) as two groups of ``LARS(lr=0,
  weight_decay, weight_decay_filter=True, lars_adaptation_filter=True)``: biases and norms neither decayed nor
  adapted, and the trust ratio of the decayed gradient, ``eta ||p|| / ||g + wd p||``;
* ``adjust_learning_rate``: ``batch / 256`` x (linear warm-up, then a cosine to 1/1000), times
  ``learning_rate_weights = 0.2`` for the weights and ``learning_rate_biases = 0.0048`` for the biases.

openseer runs the paper preset ``barlowtwins`` (``optim.lars_variant: lars``) shrunk to a tiny RegNet,
32 px views, a 16-32-16 projector and fp32, through ``build_trainer`` and ``train_step``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.methods.golden_steps import (
    BATCH,
    STEPS_PER_EPOCH,
    ReferenceLARS,
    adjust_learning_rate,
    assert_same_training,
    changed_updates,
    exclude_bias_and_norm,
    off_diagonal,
    run_both,
    tiny_config,
)

LEARNING_RATE_WEIGHTS, LEARNING_RATE_BIASES = 0.2, 0.0048  # main.py's defaults, the preset's
BASE_LR = 50.0  # for the test: peak lr 1.6 for the weights at batch 8, so that LARS moves them by ~0.1% a step


pytestmark = pytest.mark.usefixtures("one_thread")


class MainBarlowTwins:
    """The per-iteration body of barlowtwins main.py for one process, in fp32, on openseer's modules."""

    def __init__(self, model, cfg, derived):
        self.model, self.cfg, self.derived = model, cfg, derived
        self.bn = nn.BatchNorm1d(cfg.barlowtwins.projector_dims[-1], affine=False)
        param_weights = [p for p in model.parameters() if p.ndim != 1]
        param_biases = [p for p in model.parameters() if p.ndim == 1]
        self.optimizer = ReferenceLARS(
            [{"params": param_weights}, {"params": param_biases}],
            lr=0,
            weight_decay=cfg.optim.weight_decay,
            weight_decay_filter=exclude_bias_and_norm,  # main.py: True, i.e. its exclude_bias_and_norm
            lars_adaptation_filter=exclude_bias_and_norm,
        )

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        z1 = self.model.projector(self.model.backbone(y1))
        z2 = self.model.projector(self.model.backbone(y2))
        c = self.bn(z1).T @ self.bn(z2)
        c.div_(self.derived.global_batch)
        on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
        off_diag = off_diagonal(c).pow_(2).sum()
        return on_diag + self.cfg.barlowtwins.lambd * off_diag

    def step(self, step: int, views: list[torch.Tensor]) -> float:
        lr = adjust_learning_rate(
            1.0, BATCH, self.cfg.train.epochs, int(self.cfg.optim.warmup_epochs), STEPS_PER_EPOCH, step
        )
        learning_rate_biases = BASE_LR * LEARNING_RATE_BIASES / LEARNING_RATE_WEIGHTS  # their ratio as in main.py
        self.optimizer.param_groups[0]["lr"] = lr * BASE_LR
        self.optimizer.param_groups[1]["lr"] = lr * learning_rate_biases
        self.optimizer.zero_grad()
        loss = self.forward(*views)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def _cfg(extra: list[str] | None = None):
    return tiny_config(
        "barlowtwins", ["barlowtwins.projector_dims=[32,16]", f"optim.base_lr={BASE_LR}", *(extra or [])]
    )


def test_the_preset_holds_main_py_optimizer_settings():
    cfg = tiny_config("barlowtwins", [])
    assert cfg.optim.name == "lars" and cfg.optim.lars_variant == "lars" and cfg.optim.exclude_bias_and_norm
    assert cfg.optim.base_lr == LEARNING_RATE_WEIGHTS and cfg.optim.final_lr_ratio == 0.001
    assert cfg.optim.base_lr * cfg.barlowtwins.bias_lr_scale == pytest.approx(LEARNING_RATE_BIASES)
    assert cfg.optim.trust_coefficient == 0.001 and cfg.optim.momentum == 0.9


def test_three_steps_equal_barlowtwins_main_py():
    cfg = _cfg()
    initial, reference, model, losses = run_both(cfg, MainBarlowTwins)
    assert_same_training(initial, reference, model, losses)


def test_the_golden_test_sees_the_lars_variant():
    """The comparison is sharp enough to fail: apex LARC's trust ratio eta |p| / (|g| + wd |p|) changes the
    update of the weights whose gradient is small next to wd |p| (here most of the backbone's, by ~90%)."""
    initial, reference, model, _ = run_both(_cfg(["optim.lars_variant=larc"]), MainBarlowTwins)
    weights = [n for n, p in model.named_parameters() if p.ndim > 1]
    assert len(changed_updates(initial, reference, model, weights)) > len(weights) // 2
