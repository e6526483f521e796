"""RankMe, alpha-ReQ, cluster occupancy and code entropy (openseer.ops.collapse) against float64 numpy references
written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openseer.ops.collapse import alpha_req, cluster_occupancy, code_entropy, rankme


def rankme_reference(x: np.ndarray, eps: float = 1e-7) -> float:
    """Garrido et al. 2023, eq. 1: p_k = sigma_k / ||sigma||_1 + eps; RankMe = exp(-sum p_k log p_k)."""
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def alpha_reference(x: np.ndarray) -> float:
    """Agrawal et al. 2022: minus the slope of a least-squares line through (log rank, log eigenvalue)."""
    x = x.astype(np.float64) - x.mean(axis=0)
    eig = np.sort(np.linalg.eigvalsh(x.T @ x / (len(x) - 1)))[::-1]
    eig = eig[eig > 1e-10 * eig[0]]
    slope, _ = np.polyfit(np.log(np.arange(1, len(eig) + 1)), np.log(eig), 1)
    return float(-slope)


def test_rankme_matches_the_reference_on_random_features():
    x = np.random.default_rng(0).normal(size=(64, 16)) * np.linspace(0.1, 3.0, 16)
    assert rankme(torch.from_numpy(x).float()) == pytest.approx(rankme_reference(x), rel=1e-5)


def test_rankme_is_one_for_collapsed_features_and_the_dimension_for_isotropic_ones():
    constant = torch.ones(50, 32) * torch.randn(32)  # every image the same feature: rank 1
    assert rankme(constant) == pytest.approx(1.0, abs=1e-3)
    # orthonormal columns: all singular values equal -> exp(ln D) = D (less the eps term)
    q, _ = torch.linalg.qr(torch.randn(100, 20, dtype=torch.float64))
    assert rankme(q) == pytest.approx(20.0, rel=1e-4)


def test_alpha_req_matches_the_reference_and_recovers_a_power_law():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 24)) * np.linspace(0.2, 2.0, 24)
    assert alpha_req(torch.from_numpy(x)) == pytest.approx(alpha_reference(x), rel=1e-6)
    # features whose covariance eigenvalues are exactly k^-1.5: centred orthonormal columns scaled
    n, d, alpha = 300, 12, 1.5
    q, _ = np.linalg.qr(rng.normal(size=(n, d)) - rng.normal(size=(n, d)).mean(axis=0))
    q -= q.mean(axis=0)
    q, _ = np.linalg.qr(q)  # centred and orthonormal again (QR keeps the column span, which is centred)
    lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    x = q * np.sqrt(lam * (n - 1))
    assert alpha_req(torch.from_numpy(x)) == pytest.approx(alpha, rel=1e-6)


def test_alpha_req_of_one_direction_is_infinite():
    x = torch.randn(30, 1) * torch.randn(1, 8)  # rank 1 around its mean
    assert math.isinf(alpha_req(x))


def test_cluster_occupancy_counts_the_distinct_best_prototypes():
    scores = torch.full((6, 10), -1.0)
    scores[[0, 1, 2, 3, 4, 5], [3, 3, 7, 7, 7, 1]] = 1.0  # best prototypes {1, 3, 7} out of min(6, 10)
    assert float(cluster_occupancy(scores)) == pytest.approx(3 / 6)
    collapsed = torch.zeros(6, 10)
    collapsed[:, 2] = 1.0
    assert float(cluster_occupancy(collapsed)) == pytest.approx(1 / 6)


def code_entropy_reference(scores: np.ndarray, temperature: float) -> float:
    """Mean over rows of -sum p log p with p = softmax(scores / T) (max subtracted, float64), over ln K."""
    logits = scores.astype(np.float64) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    return float(h.mean() / math.log(scores.shape[1]))


def test_code_entropy_matches_the_reference_and_spans_zero_to_one():
    scores = np.random.default_rng(2).uniform(-1, 1, size=(40, 12))
    for temperature in (0.1, 1.0):
        expected = code_entropy_reference(scores, temperature)
        assert code_entropy(torch.from_numpy(scores).float(), temperature) == pytest.approx(expected, rel=1e-6)
    # equal scores: every prediction uniform over K -> 1
    assert code_entropy(torch.full((5, 30), 0.3), 0.1) == pytest.approx(1.0, abs=1e-12)
    # one clearly best prototype per row at a small temperature: one-hot predictions -> ~0
    one_hot = torch.full((6, 30), -1.0)
    one_hot[torch.arange(6), torch.tensor([0, 4, 4, 9, 20, 29])] = 1.0
    assert code_entropy(one_hot, 0.01) == pytest.approx(code_entropy_reference(one_hot.numpy(), 0.01), abs=1e-12)
    assert code_entropy(one_hot, 0.01) < 1e-20
    assert code_entropy(torch.randn(4, 1), 0.1) == 0.0  # one prototype: every prediction is one-hot
