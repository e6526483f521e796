"""MoCo v3: InfoNCE against an explicit float64 loop, the momentum network (schedule, no gradient, update
before the keys), the frozen ViT patch projection, and all-gathered keys over 2 processes."""

import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from openseer.config import ConfigError
from openseer.methods.base import StepContext
from openseer.methods.mocov3 import infonce, validate
from openseer.ops.ema import momentum_schedule
from tests.methods.two_views import (
    assert_two_processes_differ,
    assert_two_processes_equal_one,
    build,
    crops,
    full_config,
    run_info,
)


def reference_infonce(q: torch.Tensor, k: torch.Tensor, tau: float) -> float:
    """-log(exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau)) averaged over i, times 2 tau, in float64."""
    q = q.double() / q.double().norm(dim=1, keepdim=True)
    k = k.double() / k.double().norm(dim=1, keepdim=True)
    n = q.shape[0]
    total = 0.0
    for i in range(n):
        denom = sum(math.exp(float(q[i] @ k[j]) / tau) for j in range(n))
        total += -math.log(math.exp(float(q[i] @ k[i]) / tau) / denom)
    return total / n * 2 * tau


@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_infonce_matches_explicit_loop(tau):
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert float(infonce(q, k, tau)) == pytest.approx(reference_infonce(q, k, tau), rel=1e-5)


def test_keys_take_no_gradient_and_trivial_loss():
    method = build("mocov3", local_batch=4)
    q, k = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    infonce(q, k, 0.5).backward()
    assert q.grad is not None and k.grad is None
    same = torch.ones(4, 8)
    assert float(2 * infonce(same, same, 0.5)) == pytest.approx(method.trivial_loss()) == pytest.approx(2 * math.log(4))


def test_momentum_network_gets_no_gradient_and_follows_the_cosine_before_each_step():
    method = build("mocov3", local_batch=4, momentum=0.5)
    info = run_info(4)
    assert all(not p.requires_grad for p in method.momentum_backbone.parameters())
    names = [n for g in method.param_groups(method.named_parameters(), None) for n in [g.name]]
    trainable = {id(p) for g in method.param_groups(method.named_parameters(), None) for p in g.params}
    assert not trainable & {id(p) for p in method.momentum_backbone.parameters()}, names
    with torch.no_grad():
        method.backbone.conv.weight.add_(1.0)  # as if an optimizer step had moved the query network
    before = method.momentum_backbone.conv.weight.clone()
    online = method.backbone.conv.weight.clone()
    method.before_step(StepContext(1, 0, info))
    m = float(momentum_schedule(0.5, info.total_steps)[1])
    torch.testing.assert_close(method.momentum_backbone.conv.weight, m * before + (1 - m) * online)
    out = method([c[:4] for c in crops(0)], StepContext(1, 0, info))
    out.loss.backward()
    assert method.momentum_backbone.conv.weight.grad is None and method.backbone.conv.weight.grad is not None
    assert out.scalars["momentum"] == pytest.approx(m)
    assert not method.exact_accumulation


def test_constant_momentum_without_cosine():
    method = build("mocov3", local_batch=4, momentum=0.9, momentum_cosine=False)
    assert method.momentum(0) == method.momentum(2) == 0.9


def test_vit_gets_frozen_random_patch_projection_and_three_layer_projector():
    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=0)
    method = build("mocov3", local_batch=4, backbone=vit)
    proj = vit.patch_embed.proj
    assert not proj.weight.requires_grad and not proj.bias.requires_grad
    bound = math.sqrt(6.0 / (3 * 8 * 8 + 16))
    assert float(proj.weight.abs().max()) <= bound and torch.all(proj.bias == 0)
    assert sum(isinstance(m, torch.nn.Linear) for m in method.projector) == 3
    frozen_before = proj.weight.clone()
    opt = torch.optim.SGD([p for g in method.param_groups(method.named_parameters(), None) for p in g.params], lr=1.0)
    method([torch.randn(4, 3, 16, 16) for _ in range(2)], StepContext(0, 0, run_info(4))).loss.backward()
    opt.step()
    torch.testing.assert_close(proj.weight, frozen_before)
    unfrozen = build(
        "mocov3",
        local_batch=4,
        freeze_patch_embed=False,
        backbone=VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=0),
    )
    assert unfrozen.backbone.patch_embed.proj.weight.requires_grad


def test_validate_names_the_fix():
    with pytest.raises(ConfigError, match="aug.local_crops=0"):
        validate(full_config("mocov3", local_crops=2))
    with pytest.raises(ConfigError, match="mocov3.momentum"):
        validate(full_config("mocov3", momentum=1.5))


@pytest.mark.dist
def test_two_processes_equal_one_process_on_concatenated_batch():
    assert_two_processes_equal_one("mocov3")


@pytest.mark.dist
def test_without_gathered_keys_two_processes_differ():
    assert_two_processes_differ("mocov3", "local-keys")


def test_vit_predictor_ends_in_a_plain_batch_norm_and_old_checkpoints_name_the_setting():
    """moco/builder.py MoCo_ViT: _build_mlp(2, dim, mlp_dim, dim) keeps its last BN (affine=False); MoCo_ResNet's
    predictor has none. ViT checkpoints from before have no such BN: the error names mocov3.predictor_bn."""

    def vit():
        return VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=0)

    method = build("mocov3", local_batch=4, backbone=vit())
    last = method.predictor[-1]
    assert isinstance(last, torch.nn.BatchNorm1d) and not last.affine
    assert not isinstance(build("mocov3", local_batch=4).predictor[-1], torch.nn.BatchNorm1d)
    old = build("mocov3", local_batch=4, backbone=vit(), predictor_bn="off")
    assert isinstance(old.predictor[-1], torch.nn.Linear)
    with pytest.raises(ConfigError, match="mocov3.predictor_bn=off"):
        method.load_state_dict(old.state_dict())
    build("mocov3", local_batch=4, backbone=vit(), predictor_bn="off").load_state_dict(old.state_dict())
    with pytest.raises(ConfigError, match="mocov3.predictor_bn=on"):
        old.load_state_dict(method.state_dict())
