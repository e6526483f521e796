"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction"). Reference implementation: facebookresearch/barlowtwins ``main.py``.

Two views of each image go through the backbone and a wide projector (Linear without bias -> BN -> ReLU,
..., Linear without bias; 8192-8192-8192 in the paper). Each embedding dimension is standardised over the
*global* batch (the reference's ``BatchNorm1d(affine=False)`` under SyncBN), and the cross-correlation matrix
``C = z1n^T z2n / N`` of the two views is driven to the identity:

    L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2          (paper eq. 1-2; lambda = 5e-3)

The reference sums C over processes with an in-place ``torch.distributed.all_reduce`` that autograd does not
see: each process back-propagates only its own share of C, so after DDP's average the update is the gradient
of one process on the concatenated batch divided by N (the number of processes). openseer does the same
(:func:`openseer.ops.gather.all_reduce_sum` with ``grad="local"``), so biases and norm parameters, which LARS
does not adapt, step as far as the reference's and weight decay keeps its share. The standardisation
statistics stand in for the reference's SyncBatchNorm and are summed with gradient (``grad="sum"``), as SyncBN's
backward does. Batch norm inside the projector is synchronised from outside (``parallel.sync_batchnorm``, set
in the presets, as the reference converts to SyncBN).

Gradient accumulation is not exact (``exact_accumulation = False``): C and the standardisation are computed
per micro-batch, so k micro-batches are not one k-times larger batch.

Optimiser (reference): LARS, lr 0.2 per 256 images for weights and 0.0048 for biases and batch-norm
parameters, which are also excluded from weight decay and LARS adaptation; weight decay 1e-6; 10 warm-up
epochs then cosine to 1/1000; batch 2048, 1000 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from openseer.errors import ConfigError
from openseer.methods.base import ParamGroup, RunInfo, StepContext, StepOutput, split_groups
from openseer.methods.registry import MethodEntry, register_method
from openseer.methods.two_views import BackboneProjector, require_two_views
from openseer.models.backbone import feature_dim
from openseer.models.heads import MLP
from openseer.ops.gather import all_reduce_sum
from openseer.ops.matrix import off_diagonal


@dataclass
class Config:
    projector_dims: list[int] = field(
        default_factory=lambda: [8192, 8192, 8192],
        metadata={
            "help": "Widths of the projector layers, the last one being the embedding (paper: 8192-8192-8192; "
            "performance keeps rising with the width)."
        },
    )
    lambd: float = field(
        default=0.0051,
        metadata={"help": "Weight lambda of the off-diagonal (redundancy) term (reference: 0.0051 ~ 5e-3)."},
    )
    bias_lr_scale: float = field(
        default=0.024,
        metadata={"help": "lr of biases and norm parameters relative to the weights' (reference: 0.0048 / 0.2)."},
    )
    eps: float = field(default=1e-5, metadata={"help": "eps of the per-dimension standardisation (BatchNorm's)."})


def validate(cfg: Any) -> None:
    b = cfg.barlowtwins
    if not b.projector_dims or min(b.projector_dims) <= 0:
        raise ConfigError(f"barlowtwins.projector_dims={b.projector_dims} must be a non-empty list of widths > 0")
    if b.lambd < 0 or b.bias_lr_scale < 0 or b.eps <= 0:
        raise ConfigError("barlowtwins.lambd and bias_lr_scale must be >= 0 and barlowtwins.eps > 0")
    require_two_views(
        cfg,
        "barlowtwins",
        "Barlow Twins standardises each embedding dimension over the batch and needs at least 2 images per "
        "process (use >= 256 for a useful correlation estimate)",
    )


def standardise(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-dimension (z - mean) / sqrt(var + eps) over the global batch (biased variance, as BatchNorm)."""
    count = all_reduce_sum(z.new_full((1,), float(z.shape[0])), grad="sum")
    mean = all_reduce_sum(z.sum(dim=0), grad="sum") / count
    centred = z - mean
    var = all_reduce_sum((centred * centred).sum(dim=0), grad="sum") / count
    return centred / torch.sqrt(var + eps)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float) -> torch.Tensor:
    """C = z1n^T z2n / N over the global batch of N images (float32); the sum over processes carries no
    gradient of the other processes' shares, as the reference's ``torch.distributed.all_reduce(c)``."""
    z1n, z2n = standardise(z1.float(), eps), standardise(z2.float(), eps)
    count = all_reduce_sum(z1.new_full((1,), float(z1.shape[0]), dtype=torch.float32), grad="sum")
    return all_reduce_sum(z1n.T @ z2n, grad="local") / count


def barlow_loss(c: torch.Tensor, lambd: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, on-diagonal term, off-diagonal term) of a cross-correlation matrix (paper eq. 1)."""
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag, on_diag, off_diag


def projector(dims: list[int]) -> MLP:
    """The reference's projector (``dims = [in, hidden..., out]``): bias-free Linear -> BN -> ReLU blocks and a
    final bias-free Linear; the layer indices (``projector.0.weight``, ...) are those of earlier openseer runs."""
    return MLP(dims, batch_norm=True, last_bn="none", last_bias=False)


class BarlowTwins(BackboneProjector):
    """Backbone + projector; the loss drives the global-batch cross-correlation of two views to I."""

    name = "barlowtwins"

    def __init__(self, backbone: nn.Module, cfg: Config):
        super().__init__(backbone, cfg, projector([feature_dim(backbone), *cfg.projector_dims]))

    def compute_loss(self, crops: list[torch.Tensor], ctx: StepContext, targets: Any = None) -> StepOutput:
        # one view per call, as the reference: every batch norm sees one view's batch, never a mix of both
        z1 = self.projector(self.backbone(crops[0]))
        z2 = self.projector(self.backbone(crops[1]))
        with torch.autocast(device_type=z1.device.type, enabled=False):
            c = cross_correlation(z1, z2, self.cfg.eps)
            loss, on_diag, off_diag = barlow_loss(c, self.cfg.lambd)
        return StepOutput(loss, {"on_diag": on_diag.detach(), "off_diag": off_diag.detach()})

    def param_groups(self, named, optim: Any) -> list[ParamGroup]:
        """Weights and (biases + norm parameters) with the reference's lower lr, no decay and no LARS."""
        groups = split_groups(named, getattr(optim, "exclude_bias_and_norm", True))
        for g in groups:
            if g.name.endswith("_no_wd"):
                g.lr_scale = self.cfg.bias_lr_scale
        return groups

    def trivial_loss(self) -> float:
        """A collapsed embedding (every dimension constant, or all equal) scores about D: the diagonal at 0."""
        return float(self.cfg.projector_dims[-1])


def build(cfg: Any, backbone: nn.Module, info: RunInfo) -> BarlowTwins:
    if info.local_batch * info.world_size < 2:
        raise ConfigError(
            f"Barlow Twins needs a batch of at least 2 images to correlate (got {info.local_batch} x "
            f"{info.world_size} processes); raise train.batch_size"
        )
    return BarlowTwins(backbone, cfg.barlowtwins)


ENTRY = register_method(
    MethodEntry(
        "barlowtwins",
        Config,
        build,
        validate,
        "Barlow Twins (Zbontar et al. 2021): cross-correlation of two views driven to the identity",
    )
)
