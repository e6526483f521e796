"""BYOL: the normalised-MSE loss against its formula, no gradient into the target, the EMA after each step,
and batch norm synchronised across 2 processes."""

import pytest
import torch

from openseer.config import ConfigError
from openseer.methods.base import StepContext
from openseer.methods.byol import regression_loss, validate
from tests.methods.two_views import (
    assert_two_processes_differ,
    assert_two_processes_equal_one,
    build,
    crops,
    full_config,
    run_info,
)


def test_regression_loss_is_two_minus_two_cosine():
    g = torch.Generator().manual_seed(2)
    p, z = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    pd, zd = p.double(), z.double()
    cos = (pd * zd).sum(1) / (pd.norm(dim=1) * zd.norm(dim=1))
    torch.testing.assert_close(regression_loss(p, z).double(), 2 - 2 * cos, rtol=1e-5, atol=1e-6)
    ph = pd / pd.norm(dim=1, keepdim=True)
    zh = zd / zd.norm(dim=1, keepdim=True)
    torch.testing.assert_close(regression_loss(p, z).double(), ((ph - zh) ** 2).sum(1), rtol=1e-5, atol=1e-6)


def test_symmetric_loss_and_no_gradient_into_the_target():
    method = build("byol", local_batch=4)
    info = run_info(4)
    x = [c[:4] for c in crops(0)]
    out = method(x, StepContext(0, 0, info))
    out.loss.backward()
    assert all(p.grad is None for p in method.target_backbone.parameters())
    assert all(p.grad is None for p in method.target_projector.parameters())
    assert method.predictor[0].weight.grad is not None and method.backbone.conv.weight.grad is not None
    # the loss: mean over images of the two views' regression terms, recomputed from the parts
    with torch.no_grad():
        method.train()
        z = [method.projector(method.backbone(v)) for v in x]
        t = [method.target_projector(method.target_backbone(v)) for v in x]
        p = [method.predictor(v) for v in z]
        expected = (regression_loss(p[0], t[1]) + regression_loss(p[1], t[0])).mean()
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert method.exact_accumulation and method.trivial_loss() is None


def test_target_is_an_ema_of_the_online_network_after_each_step():
    method = build("byol", local_batch=4, base_momentum=0.9)
    info = run_info(4, total_steps=4)
    method.total_steps = info.total_steps
    with torch.no_grad():
        method.projector[0].weight.add_(0.5)
    before = method.target_projector[0].weight.clone()
    online = method.projector[0].weight.clone()
    method.after_step(StepContext(2, 0, info))
    tau = 1 - (1 - 0.9) * (torch.cos(torch.tensor(torch.pi * 2 / 4)) + 1) / 2
    torch.testing.assert_close(method.target_projector[0].weight, tau * before + (1 - tau) * online)


def test_validate_names_the_fix():
    with pytest.raises(ConfigError, match="aug.global_crops=2"):
        validate(full_config("byol", global_crops=3))
    with pytest.raises(ConfigError, match="byol.base_momentum"):
        validate(full_config("byol", base_momentum=-0.1))


@pytest.mark.dist
def test_two_processes_with_synchronised_batch_norm_equal_one_process():
    assert_two_processes_equal_one("byol")


@pytest.mark.dist
def test_with_per_process_batch_norm_two_processes_differ():
    assert_two_processes_differ("byol", "per-process-bn")


def test_checkpoints_with_output_biases_name_the_setting_that_loads_them():
    """Checkpoints written before the heads matched byol/utils/networks.py carry output-layer biases."""
    old = build("byol", local_batch=4, output_bias=True)
    assert old.projector[-1].bias is not None and old.predictor[-1].bias is not None
    state = old.state_dict()
    with pytest.raises(ConfigError, match="byol.output_bias=true"):
        build("byol", local_batch=4).load_state_dict(state)
    build("byol", local_batch=4, output_bias=True).load_state_dict(state)  # strict: every key fits
    with pytest.raises(ConfigError, match="byol.output_bias=false"):
        build("byol", local_batch=4, output_bias=True).load_state_dict(build("byol", local_batch=4).state_dict())
