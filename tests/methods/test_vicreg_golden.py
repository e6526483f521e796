"""Golden test: openseer's VICReg step equals facebookresearch/vicreg ``main_vicreg.py``'s step.

The reference, re-written in plain torch from the text of ``main_vicreg.py``:

* ``VICReg.forward``: ``x = projector(backbone(x))``, likewise y; ``repr_loss = F.mse_loss(x, y)``; x and y
  gathered with ``FullGatherLayer`` (the identity in one process) and centred; ``std = sqrt(var + 1e-4)``
  (unbiased), ``std_loss = mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2``;
  ``cov = x.T @ x / (batch_size - 1)``, ``cov_loss = sum(off_diagonal(cov_x)^2) / num_features`` + the same for
  y; ``loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss``;
* ``Projector``: Linear (with bias) -> BatchNorm1d -> ReLU blocks, a final bias-free Linear;
* ``LARS(model.parameters(), lr=0, weight_decay=args.wd, weight_decay_filter=exclude_bias_and_norm,
  lars_adaptation_filter=exclude_bias_and_norm)``: one group, 1-d parameters neither decayed nor adapted;
* ``adjust_learning_rate``: ``base_lr * batch / 256``, linear warm-up from 0, cosine to 1/1000; every group.

openseer runs the paper preset ``vicreg`` shrunk to a tiny RegNet, 32 px views, a 32-16 expander and fp32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from openseer.config import derive
from openseer.methods import METHODS
from openseer.methods.base import RunInfo
from openseer.models.backbone import build_backbone
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

BASE_LR = 50.0  # for the test (the preset's 0.2 moves LARS weights by ~1e-6 at batch 8)


pytestmark = pytest.mark.usefixtures("one_thread")


class MainVICReg:
    """The per-iteration body of vicreg main_vicreg.py for one process, in fp32, on openseer's modules."""

    def __init__(self, model, cfg, derived):
        self.model, self.cfg, self.derived = model, cfg, derived
        self.num_features = cfg.vicreg.projector_dims[-1]
        self.optimizer = ReferenceLARS(
            model.parameters(),
            lr=0,
            weight_decay=cfg.optim.weight_decay,
            weight_decay_filter=exclude_bias_and_norm,
            lars_adaptation_filter=exclude_bias_and_norm,
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        v = self.cfg.vicreg
        x = self.model.projector(self.model.backbone(x))
        y = self.model.projector(self.model.backbone(y))
        repr_loss = F.mse_loss(x, y)
        x = x - x.mean(dim=0)
        y = y - y.mean(dim=0)
        std_x = torch.sqrt(x.var(dim=0) + 0.0001)
        std_y = torch.sqrt(y.var(dim=0) + 0.0001)
        std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
        batch_size = self.derived.global_batch
        cov_x = (x.T @ x) / (batch_size - 1)
        cov_y = (y.T @ y) / (batch_size - 1)
        cov_loss = off_diagonal(cov_x).pow_(2).sum().div(self.num_features) + off_diagonal(cov_y).pow_(2).sum().div(
            self.num_features
        )
        return v.sim_coeff * repr_loss + v.std_coeff * std_loss + v.cov_coeff * cov_loss

    def step(self, step: int, views: list[torch.Tensor]) -> float:
        lr = adjust_learning_rate(
            BASE_LR, BATCH, self.cfg.train.epochs, int(self.cfg.optim.warmup_epochs), STEPS_PER_EPOCH, step
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad()
        loss = self.forward(*views)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def _cfg(extra: list[str] | None = None):
    return tiny_config("vicreg", ["vicreg.projector_dims=[32,16]", f"optim.base_lr={BASE_LR}", *(extra or [])])


def test_the_preset_holds_main_vicreg_settings():
    cfg = tiny_config("vicreg", [])
    o, v = cfg.optim, cfg.vicreg
    assert o.name == "lars" and o.lars_variant == "lars" and o.exclude_bias_and_norm
    assert (o.base_lr, o.final_lr_ratio, o.trust_coefficient, o.momentum) == (0.2, 0.001, 0.001, 0.9)
    assert (v.sim_coeff, v.std_coeff, v.cov_coeff, v.std_eps) == (25.0, 25.0, 1.0, 1e-4)


def test_the_expander_is_the_reference_projector():
    model = _cfg_model()
    layers = list(model.projector)
    kinds = [type(m) for m in layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert layers[0].bias is not None and layers[-1].bias is None  # hidden Linear with bias, the last without


def _cfg_model():
    cfg = _cfg()
    return METHODS["vicreg"].build(cfg, build_backbone(cfg.model), RunInfo.of(cfg, derive(cfg, 16)))


def test_three_steps_equal_main_vicreg_py():
    initial, reference, model, losses = run_both(_cfg(), MainVICReg)
    assert_same_training(initial, reference, model, losses)


def test_the_golden_test_sees_the_lars_variant():
    """apex LARC's trust ratio changes the update of most backbone weights (small gradients next to wd |p|)."""
    initial, reference, model, _ = run_both(_cfg(["optim.lars_variant=larc"]), MainVICReg)
    weights = [n for n, p in model.named_parameters() if p.ndim > 1]
    assert len(changed_updates(initial, reference, model, weights)) > len(weights) // 2
