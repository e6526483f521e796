"""The collapse signature of joint-embedding methods (SimSiam, Chen & He 2021, sec. 4.1 and fig. 2).

If every image maps to the same embedding, the per-dimension standard deviation of the l2-normalised outputs
is 0; for outputs spread like a d-dimensional isotropic Gaussian it is about 1/sqrt(d). BYOL and SimSiam can
collapse while their loss looks perfect (it reaches its minimum), so openseer logs this value as ``z_std``.

The label-free health signals of a run (`openseer.train.health`) add RankMe and alpha-ReQ of the backbone
features and of the method's output embedding, and the code entropy and cluster occupancy of SwAV /
DeepCluster-v2's prototype scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the std over the batch of ``normalize(z)`` (no gradient): 0 = collapsed."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance of pretrained self-supervised
    representations by their rank", eq. 1): ``exp(-sum p_k log p_k)`` with ``p_k = s_k / ||s||_1 + eps`` over
    the singular values ``s`` of the (N, D) feature matrix. 1 for rank-1 (collapsed) features, up to min(N, D).
    """
    s = torch.linalg.svdvals(features.detach().double())
    p = s / s.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def alpha_req(features: torch.Tensor, eps: float = 1e-10) -> float:
    """alpha-ReQ (Agrawal et al. 2022, "alpha-ReQ: Assessing representation quality by measuring eigenspectrum
    decay"): minus the least-squares slope of log eigenvalue against log rank of the feature covariance
    (centred features; eigenvalues <= ``eps`` x the largest are left out). ~1 is a healthy power law; a large
    alpha means a few dimensions hold all the variance (collapse), near 0 a flat, noise-like spectrum.
    """
    x = features.detach().double()
    x = x - x.mean(dim=0)
    eig = torch.linalg.eigvalsh(x.T @ x / max(len(x) - 1, 1)).flip(0)
    eig = eig[eig > eps * eig[0].clamp_min(torch.finfo(torch.float64).tiny)]
    if len(eig) < 2:
        return float("inf")  # one direction holds everything (or nothing varies): the steepest decay
    log_rank = torch.log(torch.arange(1, len(eig) + 1, dtype=torch.float64))
    log_eig = eig.log()
    lr_c, le_c = log_rank - log_rank.mean(), log_eig - log_eig.mean()
    return float(-(lr_c * le_c).sum() / (lr_c * lr_c).sum())


def cluster_occupancy(scores: torch.Tensor) -> torch.Tensor:
    """Fraction of the prototypes that are the best match of at least one row of the (N, K) ``scores``, out of
    ``min(N, K)`` (the most a batch can occupy): ~1 healthy, ``1/min(N, K)`` when every image goes to one
    cluster (the SwAV / DeepCluster collapse that Sinkhorn's equipartition is meant to prevent)."""
    used = torch.unique(scores.detach().argmax(dim=1)).numel()
    return torch.tensor(used / min(scores.shape[0], scores.shape[1]))


def code_entropy(scores: torch.Tensor, temperature: float) -> float:
    """Mean entropy of ``softmax(scores / temperature)`` over the rows of the (N, K) prototype scores, divided by
    ln K (float64): 1 when every image's prediction is uniform over the K prototypes, 0 when every one is one-hot
    (SwAV's predictions ``p = softmax(z^T c / tau)``, Caron et al. 2020 eq. 2). With K = 1 it is 0."""
    k = scores.shape[1]
    if k < 2:
        return 0.0
    log_p = F.log_softmax(scores.detach().double() / temperature, dim=1)
    return float(-(log_p.exp() * log_p).sum(dim=1).mean() / math.log(k))
