"""Golden test: openseer's SimCLR step equals google-research/simclr ``tf2``'s step (re-written in torch).

The reference, from the text of ``tf2/objective.py``, ``tf2/model.py``, ``tf2/lars_optimizer.py`` and
``tf2/run.py``:

* ``add_contrastive_loss(hidden, hidden_norm=True, temperature)``: l2-normalise, split into the two views,
  ``logits_aa = h1 h1^T / T - LARGE_NUM * I`` (likewise bb), ``logits_ab = h1 h2^T / T`` (likewise ba),
  ``loss = reduce_mean(CE([ab, aa], labels) + CE([ba, bb], labels))`` with labels one_hot(range(B), 2B);
* the model: both views through the backbone as one batch, then ``ProjectionHead`` (``nonlinear``): hidden
  layers Dense without bias + BN with centre and scale + ReLU, the last Dense without bias + BN without centre;
* ``LARSOptimizer(momentum 0.9, eeta 0.001, exclude_from_weight_decay=['batch_normalization', 'bias', ...])``
  (layer adaptation excluded for the same names): ``grad += wd * param`` unless excluded, ``trust_ratio =
  eeta ||w|| / ||grad||`` (1 when a norm is 0), ``v = momentum * v + lr * trust_ratio * grad``, ``w -= v``;
* ``WarmUpAndCosineDecay``: lr = base_lr x batch / 256, linear warm-up from 0 over ``warmup_epochs``, then
  ``CosineDecay`` to 0.

TensorFlow's momentum keeps the lr inside the velocity (``v += lr * d``); torch's (and openseer's LARS) multiply
the velocity by the current lr (``p -= lr * v``). The two are the same update at a constant lr, and differ only
while the lr changes (mostly in warm-up, where TF's steps are smaller). The step test therefore runs at a
constant lr; the schedule is compared on its own below.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from openseer.config import load_config
from openseer.ops.schedules import cosine_schedule
from tests.methods.golden_steps import assert_same_training, changed_updates, run_both, tiny_config

LARGE_NUM = 1e9
BASE_LR = 2.0  # for the test: peak lr 0.0625 at batch 8; larger lrs make this tiny net's 1x1 last stage chaotic


pytestmark = pytest.mark.usefixtures("one_thread")


def add_contrastive_loss(hidden: torch.Tensor, temperature: float) -> torch.Tensor:
    """tf2/objective.py ``add_contrastive_loss`` on one replica (``hidden1_large = hidden1``)."""
    hidden = F.normalize(hidden, dim=-1)
    hidden1, hidden2 = hidden.chunk(2, 0)
    batch_size = hidden1.shape[0]
    labels = F.one_hot(torch.arange(batch_size), batch_size * 2).float()
    masks = F.one_hot(torch.arange(batch_size), batch_size).float()
    logits_aa = hidden1 @ hidden1.T / temperature - masks * LARGE_NUM
    logits_bb = hidden2 @ hidden2.T / temperature - masks * LARGE_NUM
    logits_ab = hidden1 @ hidden2.T / temperature
    logits_ba = hidden2 @ hidden1.T / temperature
    loss_a = -(labels * F.log_softmax(torch.cat([logits_ab, logits_aa], 1), dim=1)).sum(1)
    loss_b = -(labels * F.log_softmax(torch.cat([logits_ba, logits_bb], 1), dim=1)).sum(1)
    return (loss_a + loss_b).mean()


class ReferenceTFLARS:
    """tf2/lars_optimizer.py ``LARSOptimizer`` (classic momentum, no Nesterov) over named torch parameters."""

    def __init__(self, named, momentum: float, weight_decay: float, eeta: float = 0.001):
        self.params = [(n, p) for n, p in named if p.requires_grad]
        self.momentum, self.weight_decay, self.eeta = momentum, weight_decay, eeta
        self.v = {n: torch.zeros_like(p) for n, p in self.params}

    @staticmethod
    def _excluded(name: str, p: torch.Tensor) -> bool:
        # the tf names 'batch_normalization' and 'bias' are, in these torch modules, the 1-d parameters
        return p.ndim == 1

    @torch.no_grad()
    def step(self, learning_rate: float) -> None:
        for name, param in self.params:
            grad = param.grad
            if not self._excluded(name, param):
                grad = grad + self.weight_decay * param
            trust_ratio = torch.ones(())
            if not self._excluded(name, param):
                w_norm, g_norm = torch.norm(param), torch.norm(grad)
                trust_ratio = torch.where(
                    w_norm > 0, torch.where(g_norm > 0, self.eeta * w_norm / g_norm, torch.ones(())), torch.ones(())
                )
            scaled_lr = learning_rate * trust_ratio
            self.v[name] = self.momentum * self.v[name] + scaled_lr * grad
            param.sub_(self.v[name])


class TF2SimCLR:
    """The pretraining step of tf2/run.py for one replica, in fp32, on openseer's modules."""

    def __init__(self, model, cfg, derived):
        self.model, self.cfg = model, cfg
        self.lr = cfg.optim.base_lr * derived.global_batch / 256  # learning_rate_scaling 'linear'
        self.optimizer = ReferenceTFLARS(model.named_parameters(), cfg.optim.momentum, cfg.optim.weight_decay)

    def step(self, step: int, views: list[torch.Tensor]) -> float:
        for p in self.model.parameters():
            p.grad = None
        hidden = self.model.projector(self.model.backbone(torch.cat(views, 0)))
        loss = add_contrastive_loss(hidden, self.cfg.simclr.temperature)
        loss.backward()
        self.optimizer.step(self.lr)  # constant here: see the module docstring
        return float(loss.detach())


def _cfg(extra: list[str] | None = None):
    constant_lr = ["optim.warmup_epochs=0", "optim.final_lr_ratio=1.0"]
    dims = ["simclr.hidden_dim=16", "simclr.output_dim=8"]
    return tiny_config("simclr-imagenet", [*dims, *constant_lr, f"optim.base_lr={BASE_LR}", *(extra or [])])


def test_the_preset_holds_the_reference_settings():
    cfg = load_config("simclr-imagenet")
    o = cfg.optim
    assert o.name == "lars" and o.lars_variant == "lars" and o.exclude_bias_and_norm
    assert (o.base_lr, o.final_lr_ratio, o.warmup_epochs, o.trust_coefficient, o.momentum) == (0.3, 0, 10, 1e-3, 0.9)
    assert cfg.simclr.temperature == 0.1 and cfg.simclr.projector_layers == 3 and cfg.simclr.output_dim == 128


def test_three_steps_equal_the_tf2_step_at_constant_lr():
    initial, reference, model, losses = run_both(_cfg(), TF2SimCLR)
    assert_same_training(initial, reference, model, losses)


def test_the_golden_test_sees_the_lars_variant():
    initial, reference, model, _ = run_both(_cfg(["optim.lars_variant=larc"]), TF2SimCLR)
    weights = [n for n, p in model.named_parameters() if p.ndim > 1]
    assert len(changed_updates(initial, reference, model, weights)) > len(weights) // 2


def test_lr_schedule_equals_warmup_and_cosine_decay():
    """tf2 ``WarmUpAndCosineDecay``: ``step / warmup * lr`` during warm-up, then ``CosineDecay(lr, total -
    warmup)`` (alpha 0): ``0.5 lr (1 + cos(pi t / (total - warmup)))``. openseer's preset: final_lr_ratio 0."""
    lr, total, warmup = 4.8, 1000, 100
    ref = [
        step / warmup * lr if step < warmup else 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        for step in range(total)
    ]
    torch.testing.assert_close(cosine_schedule(lr, 0.0, total, warmup), torch.tensor(ref, dtype=torch.float64))
