import numpy as np
import pytest
import torch
from torch import nn

from openseer.config import ConfigError
from openseer.methods import barlowtwins
from openseer.methods.barlowtwins import BarlowTwins, Config, barlow_loss, cross_correlation
from tests.dist.common import spawn
from tests.methods.equivalence import TinyBackbone, assert_same_run, context, differs, global_batches, sgd_steps


def numpy_barlow(z1: np.ndarray, z2: np.ndarray, lambd: float, eps: float = 1e-5) -> float:
    """Paper eq. 1 in float64: C_ij = sum_b z1n_bi z2n_bj / N with per-dimension batch standardisation."""
    n, d = z1.shape

    def standardise(z):
        return (z - z.mean(axis=0)) / np.sqrt(z.var(axis=0) + eps)

    a, b = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


def test_loss_matches_float64_formula_and_the_reference_batchnorm():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(10, 5, generator=g) * 3 + 1, torch.randn(10, 5, generator=g)
    z2 = z2 + z1  # correlated views
    c = cross_correlation(z1, z2, 1e-5)
    loss, on_diag, off_diag = barlow_loss(c, 0.0051)
    assert float(loss) == pytest.approx(numpy_barlow(z1.double().numpy(), z2.double().numpy(), 0.0051), rel=1e-5)
    # the reference: BatchNorm1d(affine=False) in training mode, c = bn(z1).T @ bn(z2) / N
    bn = nn.BatchNorm1d(5, affine=False)
    torch.testing.assert_close(c, bn(z1).T @ bn(z2) / 10, atol=1e-5, rtol=1e-5)
    assert float(on_diag) + 0.0051 * float(off_diag) == pytest.approx(float(loss), rel=1e-6)


def test_collapsed_embedding_scores_the_trivial_loss():
    model = BarlowTwins(TinyBackbone(), Config(projector_dims=[8, 4]))
    c = cross_correlation(torch.ones(6, 4), torch.ones(6, 4), 1e-5)
    assert float(barlow_loss(c, 0.0051)[0]) == pytest.approx(model.trivial_loss())


def test_forward_backward_and_param_groups():
    model = BarlowTwins(TinyBackbone(), Config(projector_dims=[16, 16, 8]))
    out = model([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)], context(local_batch=4))
    out.loss.backward()
    assert torch.isfinite(out.loss) and set(out.scalars) == {"on_diag", "off_diag"}
    assert model.backbone.conv.weight.grad.abs().sum() > 0
    groups = {g.name: g for g in model.param_groups(model.named_parameters(), None)}
    assert groups["default_no_wd"].lr_scale == pytest.approx(0.024) and groups["default_no_wd"].lars_exclude
    assert groups["default"].lr_scale == 1.0 and not groups["default"].lars_exclude
    # the reference's projector: Linear layers without bias, so every 1-d parameter is a BN weight or bias
    assert all(m.bias is None for m in model.projector if isinstance(m, nn.Linear))


def test_a_global_batch_of_one_is_a_config_error():
    info = context(local_batch=1).info
    cfg = type("C", (), {"barlowtwins": Config()})()
    with pytest.raises(ConfigError, match="raise train.batch_size"):
        barlowtwins.build(cfg, TinyBackbone(), info)


def _make():
    return BarlowTwins(TinyBackbone(), Config(projector_dims=[12, 8], lambd=0.05))


def _runs(rank: int, world: int, batches) -> dict:
    right = sgd_steps(_make, batches)
    real = barlowtwins.all_reduce_sum
    # C's sum carrying every process's gradient (openseer before it matched the reference): N times the update
    barlowtwins.all_reduce_sum = lambda t, grad: real(t, "sum")
    summed = sgd_steps(_make, batches)
    barlowtwins.all_reduce_sum = lambda t, grad: t  # per-process statistics, as without the all-reduce
    broken = sgd_steps(_make, batches)
    return {"right": right, "summed": summed, "broken": broken}


@pytest.mark.dist
def test_two_processes_step_as_the_reference_one_process_at_half_the_lr(tmp_path):
    """facebookresearch/barlowtwins sums C with an all_reduce that autograd does not see, so each process's
    gradient is its own share of the full one and DDP's average divides it by N = 2: with plain SGD, two
    processes at lr 0.05 take exactly the steps of one process on the concatenated batch at lr 0.025."""
    batches = global_batches(steps=3, batch=8)
    single_half_lr = sgd_steps(_make, batches, lr=0.025)
    single = sgd_steps(_make, batches, lr=0.05)
    two = spawn(_runs, 2, tmp_path, batches)
    for rank in range(2):
        assert_same_run(two[rank]["right"], single_half_lr)
        assert differs(two[rank]["right"], single)
        assert_same_run(two[rank]["summed"], single)  # the gradient-carrying sum is the one-process gradient
        assert differs(two[rank]["broken"], single_half_lr)  # the test catches a missing all-reduce
