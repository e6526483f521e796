"""Projection head and prototypes (SwAV, Caron et al. 2020, sec. 3.1; facebookresearch/swav resnet50.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionMLP(nn.Module):
    """Linear -> BN -> ReLU blocks, then a linear layer to ``out_dim``; output L2-normalised.

    ``dims = [in, hidden..., out]``. SwAV uses [2048, 2048, 128] with BN; SEER-256GF uses [10444, 8192, 8192, 256]
    without BN (``batch_norm=False``).
    """

    def __init__(self, dims: list[int], batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(dims) - 2):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(dims[-2], dims[-1]))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=1)


class Prototypes(nn.Module):
    """K prototype vectors (a bias-free linear layer); scores are dot products with unit-norm embeddings."""

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.normal_(self.weight)
        self.normalize()

    @torch.no_grad()
    def normalize(self) -> None:
        """Project prototypes back onto the unit sphere (SwAV does this before every step)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.t()
