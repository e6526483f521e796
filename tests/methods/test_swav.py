import math

import pytest
import torch
from torch import nn

from openseer.config import load_config
from openseer.methods import METHODS
from openseer.methods.swav import SwAV, SwAVConfig
from openseer.ops.sinkhorn import sinkhorn_knopp
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
    loss = model(crops)
    loss.backward()
    assert calls == [torch.Size([6, 3, 16, 16]), torch.Size([9, 3, 8, 8])]  # one call per resolution
    assert torch.isfinite(loss) and model.prototypes.weight.grad is not None
    assert model.backbone.conv.weight.grad.abs().sum() > 0


def test_queue_fills_newest_first_then_is_used():
    batch = 4
    cfg = SwAVConfig(num_prototypes=5, output_dim=3, crops_for_assign=[0], queue_length=8, queue_start_epoch=1)
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
    model = METHODS["swav"].build(cfg, TinyBackbone(), global_batch=64)
    mult = model.lr_multipliers(6)
    assert mult["prototypes"].tolist() == [0, 0, 0, 1, 1, 1]
    with torch.no_grad():
        model.prototypes.weight.mul_(3)
    model.before_step()
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(cfg.swav.num_prototypes))
    assert model.uniform_loss() == pytest.approx(math.log(cfg.swav.num_prototypes))


def test_queue_length_rounds_to_global_batch():
    cfg = load_config("demo", ["swav.queue_length=1000", "train.batch_size=64"])
    model = METHODS["swav"].build(cfg, TinyBackbone(), global_batch=64)
    assert model.queue.shape == (2, 960, cfg.swav.output_dim)
