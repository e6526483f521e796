"""Golden test: openseer's SimSiam step equals facebookresearch/simsiam ``main_simsiam.py``'s step.

The reference, re-written in plain torch from the text of ``main_simsiam.py`` and ``simsiam/builder.py``:

* ``SimSiam.forward``: ``z = encoder(x)`` (the backbone with the projector as its ``fc``) and
  ``p = predictor(z)`` for each view separately; ``z`` returned detached;
* ``train``: ``loss = -(CosineSimilarity(dim=1)(p1, z2).mean() + CosineSimilarity(dim=1)(p2, z1).mean()) * 0.5``;
  ``optimizer.zero_grad(); loss.backward(); optimizer.step()``;
* the optimizer: ``torch.optim.SGD`` over two groups, the encoder (``fix_lr: False``) and the predictor
  (``fix_lr: True``, the README's ``--fix-pred-lr``), momentum 0.9, weight decay on every parameter;
* ``adjust_learning_rate(optimizer, init_lr, epoch, args)``, once per epoch: ``init_lr x 0.5 (1 + cos(pi epoch
  / epochs))`` for the encoder, ``init_lr`` for the predictor; ``init_lr = lr x batch / 256``.

openseer runs the paper preset ``simsiam-imagenet`` on a tiny RegNet (fp32) through ``build_trainer`` and
``train_step``. The reference sets the lr once per epoch and openseer at every step, so the test runs one step
per epoch (3 epochs of one batch), where the two schedules are the same numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.methods.golden import (
    BATCH,
    STEPS,
    TINY_REGNET,
    assert_losses_equal,
    assert_states_equal,
    build_pair,
    run_openseer,
    views,
)

OVERRIDES = TINY_REGNET + [
    "aug.global_size=32",
    "simsiam.output_dim=32",
    "simsiam.predictor_hidden_dim=8",
    f"train.epochs={STEPS}",
    "optim.base_lr=0.5",  # lr 0.016 at batch 8 (the preset's 0.05 moves the tiny net's weights too little to see)
    "optim.weight_decay=0.01",  # large enough that decay on every parameter shows in 3 steps
]

pytestmark = pytest.mark.usefixtures("one_thread")


class MainSimSiam:
    """One iteration of ``main_simsiam.py`` ``train()`` with the lr its ``adjust_learning_rate`` sets."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg
        self.init_lr = cfg.optim.base_lr * BATCH / 256
        encoder = [p for n, p in model.named_parameters() if not n.startswith("predictor.")]
        self.optimizer = torch.optim.SGD(
            [{"params": encoder, "fix_lr": False}, {"params": model.predictor.parameters(), "fix_lr": True}],
            self.init_lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )
        self.criterion = nn.CosineSimilarity(dim=1)

    def adjust_learning_rate(self, epoch: int) -> None:
        cur_lr = self.init_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.cfg.train.epochs))
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.init_lr if param_group["fix_lr"] else cur_lr

    def step(self, epoch: int, x1: torch.Tensor, x2: torch.Tensor) -> float:
        self.adjust_learning_rate(epoch)
        m = self.model
        z1, z2 = m.projector(m.backbone(x1)), m.projector(m.backbone(x2))
        p1, p2 = m.predictor(z1), m.predictor(z2)
        z1, z2 = z1.detach(), z2.detach()
        loss = -(self.criterion(p1, z2).mean() + self.criterion(p2, z1).mean()) * 0.5
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def test_three_steps_equal_main_simsiam():
    pair = build_pair("simsiam-imagenet", OVERRIDES, steps_per_epoch=1)
    assert pair.cfg.simsiam.fix_pred_lr and not pair.cfg.optim.exclude_bias_and_norm
    assert pair.cfg.optim.name == "sgd"
    crops = [views(step, [32, 32]) for step in range(STEPS)]
    reference = MainSimSiam(pair.reference, pair.cfg)
    ref_losses = [reference.step(step, *[c.clone() for c in crops[step]]) for step in range(STEPS)]
    assert_losses_equal(run_openseer(pair, crops), ref_losses)
    assert_states_equal(pair)


def test_the_golden_test_sees_a_decaying_predictor_lr():
    """Without ``fix_pred_lr`` the predictor follows the cosine: exactly its parameters then differ."""
    pair = build_pair("simsiam-imagenet", OVERRIDES + ["simsiam.fix_pred_lr=false"], steps_per_epoch=1)
    crops = [views(step, [32, 32]) for step in range(STEPS)]
    reference = MainSimSiam(pair.reference, pair.cfg)  # still fixes the predictor's lr
    for step in range(STEPS):
        reference.step(step, *[c.clone() for c in crops[step]])
    run_openseer(pair, crops)
    ref = dict(pair.reference.named_parameters())
    for name, p in pair.model.named_parameters():
        if name.startswith("predictor."):
            assert not torch.allclose(p, ref[name], rtol=1e-5, atol=1e-6), name
