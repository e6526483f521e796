"""SimCLR: NT-Xent against an explicit float64 double loop, the trivial value, validation, and the global
batch over 2 processes (negatives gathered with gradients)."""

import math

import pytest
import torch

from openseer.config import ConfigError
from openseer.methods.base import StepContext
from openseer.methods.simclr import nt_xent
from tests.methods.two_views import (
    assert_two_processes_differ,
    assert_two_processes_equal_one,
    build,
    crops,
    full_config,
    run_info,
)


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Paper eq. 1 summed the reference's way: sum over both views of the mean over anchors, float64 loops."""
    h = torch.cat([z1, z2]).double()
    h = h / h.norm(dim=1, keepdim=True)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)  # the other view of the same image
        denom = sum(math.exp(float(h[i] @ h[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(h[i] @ h[j]) / tau) / denom)
    return total / n  # (sum over view-1 anchors + sum over view-2 anchors) / n


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_matches_explicit_double_loop(tau):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    loss, acc = nt_xent(z1, z2, tau)
    assert float(loss) == pytest.approx(reference_nt_xent(z1, z2, tau), rel=1e-5)
    assert 0.0 <= float(acc) <= 1.0


def test_identical_embeddings_give_the_trivial_loss():
    method = build("simclr", local_batch=6)
    z = torch.ones(6, 8)
    loss, _ = nt_xent(z, z, 0.5)
    assert float(loss) == pytest.approx(method.trivial_loss()) == pytest.approx(2 * math.log(11))


def test_forward_backward_reaches_backbone_and_projector():
    method = build("simclr", local_batch=4)
    out = method([c[:4] for c in crops(0)], StepContext(0, 0, run_info(4)))
    out.loss.backward()
    assert out.loss.ndim == 0 and {"contrast_acc", "z_std"} <= set(out.scalars)
    assert method.backbone.conv.weight.grad is not None and method.projector[0].weight.grad is not None
    assert not method.exact_accumulation
    names = {g.name for g in method.param_groups(method.named_parameters(), None)}
    assert names == {"default", "default_no_wd"}


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"local_crops": 6}, "aug.global_crops=2 aug.local_crops=0"),
        ({"batch_size": 1}, "raise train.batch_size"),
        ({"temperature": 0.0}, "simclr.temperature"),
    ],
)
def test_validate_names_the_fix(kw, fragment):
    from openseer.methods.simclr import validate

    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        validate(full_config("simclr", **kw))


@pytest.mark.dist
def test_two_processes_equal_one_process_on_concatenated_batch():
    assert_two_processes_equal_one("simclr")


@pytest.mark.dist
@pytest.mark.parametrize("variant", ["local-negatives", "gather-without-grad"])
def test_without_the_gathered_negatives_two_processes_differ(variant):
    """Negatives from this process only change the loss; a gather without gradients keeps the first loss but
    drops the gradient through the other processes' embeddings, so training then differs."""
    assert_two_processes_differ("simclr", variant)
