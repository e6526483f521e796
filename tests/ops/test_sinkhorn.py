import math

import pytest
import torch

from openseer.ops.sinkhorn import sinkhorn_knopp


def reference_sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """SwAV's algorithm (facebookresearch/swav distributed_sinkhorn, one process), in float64."""
    q = torch.exp(scores.double() / eps).t()  # K x B
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


@pytest.mark.parametrize("b,k,eps,iters", [(32, 10, 0.05, 3), (64, 300, 0.05, 3), (16, 50, 0.1, 10)])
def test_matches_float64_reference(b, k, eps, iters):
    g = torch.Generator().manual_seed(0)
    scores = (
        torch.nn.functional.normalize(torch.randn(b, 8, generator=g), dim=1)
        @ torch.nn.functional.normalize(torch.randn(k, 8, generator=g), dim=1).t()
    )
    q = sinkhorn_knopp(scores, eps, iters)
    ref = reference_sinkhorn(scores, eps, iters)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q.double(), ref, rtol=2e-4, atol=1e-6)


def test_marginals_converge_to_equipartition():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(40, 8, generator=g).clamp(-1, 1)
    q = sinkhorn_knopp(scores, epsilon=0.05, iterations=200)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(40))  # each sample: a distribution
    torch.testing.assert_close(q.sum(dim=0), torch.full((8,), 40 / 8), rtol=1e-3, atol=1e-3)  # B/K each


def test_stable_for_large_k_and_small_epsilon():
    # exp(1 / 0.01) = e^100 overflows float32: the exp-domain reference in float32 gives NaN here
    g = torch.Generator().manual_seed(2)
    scores = (
        torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=1)
        @ torch.nn.functional.normalize(torch.randn(16000, 16, generator=g), dim=1).t()
    )
    assert not torch.isfinite(torch.exp(scores.float() / 0.01)).all()
    q = sinkhorn_knopp(scores, epsilon=0.01, iterations=10)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64))
    torch.testing.assert_close(q.double(), reference_sinkhorn(scores, 0.01, 10), rtol=1e-3, atol=1e-6)


def test_bf16_input_is_computed_in_float32_without_grad():
    scores = torch.randn(8, 5, requires_grad=True)
    q = sinkhorn_knopp(scores.bfloat16(), 0.05, 3)
    assert q.dtype == torch.float32 and not q.requires_grad
    assert math.isclose(float(q.sum()), 8.0, rel_tol=1e-5)
