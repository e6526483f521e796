"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce, LeCun, ICLR 2022). Reference
implementation: facebookresearch/vicreg ``main_vicreg.py``.

Two views x, y of each image go through the backbone and an expander (Linear -> BN -> ReLU, ..., Linear
without bias; 8192-8192-8192 in the paper). The loss (paper eq. 1-6, coefficients 25 / 25 / 1):

    invariance  s(x, y) = mean over images and dimensions of (x - y)^2                     (F.mse_loss)
    variance    v(x) = mean_j relu(1 - sqrt(Var(x_j) + 1e-4))        (unbiased variance over the batch)
    covariance  c(x) = sum_{i != j} Cov(x)_ij^2 / d,   Cov(x) = (x - mean)^T (x - mean) / (N - 1)
    L = 25 s + 25 (v(x) + v(y)) / 2 + 1 (c(x) + c(y))

The variance and covariance terms are computed on the embeddings of the *global* batch, gathered from every
process with gradient (:func:`openseer.ops.gather.all_gather_with_grad`, the reference's ``FullGatherLayer``:
the backward sums each process's share of the gradient over processes, so with DDP's average the update is
exactly one process's on the concatenated batch); the invariance term is per process, and DDP's gradient
averaging makes it the global mean. Batch norm inside the expander is synchronised from outside
(``parallel.sync_batchnorm``, set in the presets, as the reference converts to SyncBN).

Gradient accumulation is not exact (``exact_accumulation = False``): the variance and covariance of k
micro-batches are not those of one k-times larger batch.

Optimiser (reference): LARS, base lr 0.2 per 256 images, weight decay 1e-6, biases and norm parameters
excluded from weight decay and LARS adaptation; 10 warm-up epochs then cosine to 1/1000; batch 2048.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from openseer.errors import ConfigError
from openseer.methods.base import CollapseSignal, RunInfo, StepContext, StepOutput
from openseer.methods.registry import MethodEntry, register_method
from openseer.methods.two_views import BackboneProjector, require_two_views
from openseer.models.backbone import feature_dim
from openseer.models.heads import MLP
from openseer.ops.gather import all_gather_with_grad
from openseer.ops.matrix import off_diagonal


@dataclass
class Config:
    projector_dims: list[int] = field(
        default_factory=lambda: [8192, 8192, 8192],
        metadata={"help": "Widths of the expander layers, the last one being the embedding (paper: 8192-8192-8192)."},
    )
    sim_coeff: float = field(default=25.0, metadata={"help": "Weight lambda of the invariance (MSE) term."})
    std_coeff: float = field(default=25.0, metadata={"help": "Weight mu of the variance (hinge on std) term."})
    cov_coeff: float = field(default=1.0, metadata={"help": "Weight nu of the covariance term."})
    std_eps: float = field(default=1e-4, metadata={"help": "epsilon inside sqrt(Var + eps) of the variance term."})


def validate(cfg: Any) -> None:
    v = cfg.vicreg
    if not v.projector_dims or min(v.projector_dims) <= 0:
        raise ConfigError(f"vicreg.projector_dims={v.projector_dims} must be a non-empty list of widths > 0")
    if min(v.sim_coeff, v.std_coeff, v.cov_coeff) < 0 or v.std_eps <= 0:
        raise ConfigError("vicreg.sim_coeff, std_coeff and cov_coeff must be >= 0 and vicreg.std_eps > 0")
    require_two_views(
        cfg,
        "vicreg",
        "VICReg's variance and covariance are batch statistics and need at least 2 images per process "
        "(use >= 256 for useful estimates)",
    )


def variance_term(x: torch.Tensor, eps: float) -> torch.Tensor:
    """mean_j relu(1 - sqrt(Var_j + eps)) of a centred (N, d) batch (unbiased variance)."""
    std = torch.sqrt(x.var(dim=0) + eps)
    return F.relu(1 - std).mean()


def covariance_term(x: torch.Tensor) -> torch.Tensor:
    """sum of squared off-diagonal covariances / d of a centred (N, d) batch."""
    n, d = x.shape
    cov = (x.T @ x) / (n - 1)
    return off_diagonal(cov).pow(2).sum() / d


def vicreg_terms(x_local: torch.Tensor, y_local: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """The three terms on this process's embeddings; variance and covariance over the global batch."""
    invariance = F.mse_loss(x_local, y_local)
    x, y = all_gather_with_grad(x_local), all_gather_with_grad(y_local)
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    variance = variance_term(x, eps) / 2 + variance_term(y, eps) / 2
    covariance = covariance_term(x) + covariance_term(y)
    return {"invariance": invariance, "variance": variance, "covariance": covariance}


def expander(dims: list[int]) -> MLP:
    """The reference's expander (``dims = [in, hidden..., out]``): Linear (with bias) -> BN -> ReLU blocks and a
    final bias-free Linear; the layer indices (``projector.0.weight``, ...) are those of earlier openseer runs."""
    return MLP(dims, batch_norm=True, last_bn="none", last_bias=False, hidden_bias=True)


class VICReg(BackboneProjector):
    """Backbone + expander; invariance between views, variance and decorrelation within each view."""

    name = "vicreg"

    def __init__(self, backbone: nn.Module, cfg: Config):
        super().__init__(backbone, cfg, expander([feature_dim(backbone), *cfg.projector_dims]))

    def compute_loss(self, crops: list[torch.Tensor], ctx: StepContext, targets: Any = None) -> StepOutput:
        x = self.projector(self.backbone(crops[0]))
        y = self.projector(self.backbone(crops[1]))
        with torch.autocast(device_type=x.device.type, enabled=False):
            terms = vicreg_terms(x.float(), y.float(), self.cfg.std_eps)
            c = self.cfg
            loss = c.sim_coeff * terms["invariance"] + c.std_coeff * terms["variance"]
            loss = loss + c.cov_coeff * terms["covariance"]
        scalars = {k: v.detach() for k, v in terms.items()}
        scalars["embedding_std"] = x.detach().float().std(dim=0).mean()  # ~0: collapse
        return StepOutput(loss, scalars)

    def trivial_loss(self) -> float:
        """A collapsed embedding (all images equal): no invariance or covariance cost, variance 1 - 0.01."""
        return self.cfg.std_coeff * (1 - self.cfg.std_eps**0.5)

    def collapse_signals(self) -> tuple[CollapseSignal, ...]:
        """The defaults plus this method's collapse signature (docs/methods.md)."""
        return super().collapse_signals() + (
            CollapseSignal(
                "embedding_std",
                0.1,
                "below",
                "raise vicreg.std_coeff (25 in the paper) or lower vicreg.sim_coeff, lower optim.base_lr",
            ),
        )


def build(cfg: Any, backbone: nn.Module, info: RunInfo) -> VICReg:
    if info.local_batch * info.world_size < 2:
        raise ConfigError(
            f"VICReg needs a batch of at least 2 images for its variance and covariance (got "
            f"{info.local_batch} x {info.world_size} processes); raise train.batch_size"
        )
    return VICReg(backbone, cfg.vicreg)


ENTRY = register_method(
    MethodEntry(
        "vicreg",
        Config,
        build,
        validate,
        "VICReg (Bardes et al. 2022): invariance, variance and covariance terms on two views",
    )
)
