"""Sinkhorn-Knopp equipartition of samples over prototypes (SwAV, Caron et al. 2020, eq. 3 and alg. 1).

Given prototype scores ``z^T c`` for B samples and K prototypes, find the soft codes Q (B x K) that maximise
``Tr(Q^T C^T Z) + eps H(Q)`` under equal-partition constraints: every prototype receives B/K of the mass,
every sample 1/B; returned rows are rescaled to sum to 1 (one distribution over prototypes per sample).

The reference (facebookresearch/swav ``distributed_sinkhorn``) exponentiates ``scores / eps`` directly, which
overflows for small eps or large scores. This version iterates in the log domain, so it is stable for any
eps and any K; the per-prototype sums over the batch are reduced across processes (two all-reduces per
iteration: max, then sum-of-exp), so a distributed run equals one process on the concatenated batch.
"""

from __future__ import annotations

import math

import torch

from openseer import dist


def _global_logsumexp_over_batch(log_q: torch.Tensor) -> torch.Tensor:
    """log(sum over all processes' samples of exp(log_q)), per prototype: shape (K,)."""
    m = log_q.max(dim=0).values
    m = dist.all_reduce_max(m.clone())
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = dist.all_reduce_sum(torch.exp(log_q - m).sum(dim=0))
    return torch.log(s) + m


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft codes for ``scores`` (B_local x K), computed in float32 without gradient.

    Args:
        scores: prototype scores of this process's samples (any dtype; cast to float32).
        epsilon: entropy regularisation (SwAV: 0.05; SEER-10B: 0.03). Smaller is sharper.
        iterations: alternating normalisations (SwAV: 3; SEER: 10).

    Returns:
        Q of shape (B_local, K), each row a distribution over the K prototypes.
    """
    log_q = scores.float() / epsilon
    batch = torch.tensor(float(log_q.shape[0]), device=log_q.device)
    total_b = dist.all_reduce_sum(batch).item()
    k = log_q.shape[1]
    # normalise the whole matrix to total mass 1 (constant shift; does not change the fixed point)
    log_q = log_q - _global_logsumexp_over_batch(log_q).logsumexp(dim=0)
    for _ in range(iterations):
        # every prototype gets mass 1/K
        log_q = log_q - _global_logsumexp_over_batch(log_q) - math.log(k)
        # every sample gets mass 1/B
        log_q = log_q - log_q.logsumexp(dim=1, keepdim=True) - math.log(total_b)
    # rows sum to 1 (the reference multiplies by B)
    return torch.exp(log_q + math.log(total_b))
