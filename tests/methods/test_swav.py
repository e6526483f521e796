import math

import pytest
import torch
from torch import nn

from openseer.config import derive, load_config
from openseer.methods import METHODS
from openseer.methods.swav import SwAV, SwAVConfig
from openseer.ops.sinkhorn import sinkhorn_knopp
from openseer.train import build_optimizer, build_trainer, group_lr, train_step
from tests.helpers import run_info, step_ctx
from tests.ops.test_sinkhorn import reference_sinkhorn


class TinyBackbone(nn.Module):
    num_features = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_loss_on_hand_computed_inputs():
    """Two crops, B=2, K=3: loss = mean over assigned crops of CE(sinkhorn(other), softmax(this / T))."""
    cfg = SwAVConfig(
        num_prototypes=3,
        output_dim=2,
        temperature=0.5,
        epsilon=0.5,
        sinkhorn_iterations=3,
        crops_for_assign=[0, 1],
    )
    model = SwAV(TinyBackbone(), cfg)
    scores = torch.tensor(
        [
            [0.9, 0.1, -0.3],
            [0.2, 0.8, 0.0],  # crop 0, samples a, b
            [0.7, 0.0, 0.1],
            [-0.1, 0.5, 0.6],
        ]
    )  # crop 1
    codes = model.assign(torch.zeros(4, 2), scores, batch=2, epoch=0)
    loss = model.swapped_prediction_loss(scores, codes, batch=2)
    s = scores.double()
    expected = 0.0
    for assign, predict in ((0, 1), (1, 0)):
        q = reference_sinkhorn(s[assign * 2 : assign * 2 + 2], 0.5, 3)
        logp = torch.log_softmax(s[predict * 2 : predict * 2 + 2] / 0.5, dim=1)
        expected += float(-(q * logp).sum(dim=1).mean()) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_multicrop_forward_backward_and_grouping():
    cfg = SwAVConfig(num_prototypes=7, output_dim=4, hidden_dims=[8], crops_for_assign=[0, 1])
    model = SwAV(TinyBackbone(), cfg)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    crops = [
        torch.randn(3, 3, 16, 16),
        torch.randn(3, 3, 16, 16),
        torch.randn(3, 3, 8, 8),
        torch.randn(3, 3, 8, 8),
        torch.randn(3, 3, 8, 8),
    ]
    loss = model(crops, step_ctx()).loss
    loss.backward()
    assert calls == [torch.Size([6, 3, 16, 16]), torch.Size([9, 3, 8, 8])]  # one call per resolution
    assert torch.isfinite(loss) and model.prototypes.weight.grad is not None
    assert model.backbone.conv.weight.grad.abs().sum() > 0


def test_queue_fills_newest_first_then_is_used():
    batch = 4
    cfg = SwAVConfig(
        num_prototypes=5, output_dim=3, crops_for_assign=[0], queue_length=8, queue_start_epoch=1
    )
    model = SwAV(TinyBackbone(), cfg, local_queue_length=8)
    z = [torch.nn.functional.normalize(torch.randn(2 * batch, 3), dim=1) for _ in range(4)]
    scores = [model.prototypes(x).detach() for x in z]
    # before the start epoch: no queue at all
    model.assign(z[0], scores[0], batch, epoch=0)
    assert model.queue_filled == 0 and model.queue.abs().sum() == 0
    # epoch 1: fills (batch 1 then 2), codes from the batch alone until full
    model.assign(z[1], scores[1], batch, epoch=1)
    torch.testing.assert_close(model.queue[0, :batch], z[1][:batch])
    model.assign(z[2], scores[2], batch, epoch=1)
    assert model.queue_filled == 8
    torch.testing.assert_close(model.queue[0, :batch], z[2][:batch])
    torch.testing.assert_close(model.queue[0, batch:], z[1][:batch])
    # full: codes come from Sinkhorn over [queue; batch]
    queue_before = model.queue[0].clone()
    codes = model._codes(0, z[3][:batch], scores[3][:batch], use_queue=True)
    joint = torch.cat([queue_before @ model.prototypes.weight.t(), scores[3][:batch]])
    torch.testing.assert_close(codes, sinkhorn_knopp(joint, cfg.epsilon, cfg.sinkhorn_iterations)[-batch:])
    # queue travels in the state dict
    state = model.state_dict()
    fresh = SwAV(TinyBackbone(), cfg, local_queue_length=8)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue, model.queue) and fresh.queue_filled == model.queue_filled


def test_prototype_freeze_schedule_and_normalisation():
    cfg = load_config("demo", ["swav.freeze_prototypes_steps=3"])
    model = METHODS["swav"].build(cfg, TinyBackbone(), run_info(64))
    _, groups = build_optimizer(cfg, model)
    mult = {g.name: torch.tensor([group_lr(g, 1.0, s) for s in range(6)]) for g in groups}
    assert mult["prototypes"].tolist() == [0, 0, 0, 1, 1, 1]
    with torch.no_grad():
        model.prototypes.weight.mul_(3)
    model.before_step(step_ctx())
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(cfg.swav.num_prototypes))
    assert model.trivial_loss() == pytest.approx(math.log(cfg.swav.num_prototypes))


def test_queue_length_rounds_to_global_batch():
    cfg = load_config("demo", ["swav.queue_length=1000", "train.batch_size=64"])
    model = METHODS["swav"].build(cfg, TinyBackbone(), run_info(64))
    assert model.queue.shape == (2, 960, cfg.swav.output_dim)


def test_a_skipped_nonfinite_step_leaves_the_queue_as_before():
    """A NaN batch is skipped by the loop, and the rows it pushed into the queue are rolled back."""
    cfg = load_config(
        "demo",
        ["swav.queue_length=8", "swav.queue_start_epoch=0", "swav.output_dim=3", "swav.num_prototypes=5",
         "swav.hidden_dims=[8]", "train.batch_size=4", "train.precision=fp32", "model.channels_last=false"],
    )  # fmt: skip
    derived = derive(cfg, 8, 1)
    torch.manual_seed(0)
    model = METHODS["swav"].build(cfg, TinyBackbone(), run_info(4))
    trainer = build_trainer(cfg, model, derived, torch.device("cpu"))
    crops = [torch.randn(4, 3, 8, 8) for _ in range(cfg.aug.global_crops)]
    assert train_step(trainer, [crops], step=0, epoch=0).finite
    queue, filled = model.queue.clone(), model.queue_filled
    assert filled == 4 and torch.isfinite(queue).all()
    bad = [c.clone().fill_(float("nan")) for c in crops]
    assert not train_step(trainer, [bad], step=1, epoch=0).finite
    assert model.queue_filled == filled
    torch.testing.assert_close(model.queue, queue, rtol=0, atol=0)
    assert train_step(trainer, [crops], step=2, epoch=0).finite and model.queue_filled == 8


def test_prototype_scores_and_codes_are_float32_under_bf16_autocast():
    """Scores against the prototypes (batch and queue) run in float32 with autocast off (VISSL's fp32 unit)."""
    torch.manual_seed(0)
    cfg = SwAVConfig(num_prototypes=50, output_dim=16, hidden_dims=[8], crops_for_assign=[0])
    model = SwAV(TinyBackbone(), cfg)
    z = torch.nn.functional.normalize(torch.randn(6, 16), dim=1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model.scores(z)
        out = model([torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)], step_ctx())
    assert scores.dtype == torch.float32
    reference = z.double() @ model.prototypes.weight.double().t()
    torch.testing.assert_close(scores.double(), reference, rtol=1e-6, atol=1e-6)
    assert out.loss.dtype == torch.float32


def test_bias_and_norm_exclusion_is_an_option():
    """SwAV/SEER decay and LARS-adapt every parameter (optim.exclude_bias_and_norm=false); the default excludes."""
    for exclude, names in ((True, {"default", "default_no_wd", "prototypes"}), (False, {"default", "prototypes"})):
        cfg = load_config("demo", [f"optim.exclude_bias_and_norm={str(exclude).lower()}", "optim.weight_decay=0.01"])
        model = METHODS["swav"].build(cfg, TinyBackbone(), run_info(64))
        opt, groups = build_optimizer(cfg, model)
        assert {g.name for g in groups} == names
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
        for g in opt.param_groups:
            excluded = g["name"].endswith("_no_wd")
            assert g["weight_decay"] == (0.0 if excluded else 0.01) and g["lars_exclude"] == excluded
        frozen = [g.freeze_steps for g in groups if g.name == "prototypes"]
        assert frozen == [cfg.swav.freeze_prototypes_steps]
