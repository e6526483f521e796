"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He 2021).

One encoder (backbone -> projector) and a predictor. The prediction of each view must match the other view's
projection, which is treated as a constant (stop-gradient): the loss is the negative cosine similarity
``D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`` (paper eq. 3-4). No negatives, no momentum network: the
stop-gradient alone prevents collapse (sec. 4.1); collapse shows as the loss at its minimum, -1, with the
embedding std ``z_std`` at 0 (openseer logs it).

Reference: facebookresearch/simsiam ``simsiam/builder.py`` (projector: the backbone's width for the hidden
layers, BN and ReLU, then a linear layer to ``dim`` 2048 and a BN without affine parameters; predictor
2048 -> 512 (BN, ReLU) -> 2048) and ``main_simsiam.py`` (``nn.CosineSimilarity``; SGD lr 0.05 x batch / 256,
momentum 0.9, wd 1e-4 on every parameter, cosine decay without warm-up, batch 512, 100 epochs, sync BN; CIFAR
in the paper's appendix: 2-layer projector, lr 0.03, wd 5e-4, 800 epochs). ``simsiam.fix_pred_lr`` is the
reference's ``--fix-pred-lr`` (its README's recommended command; the paper's Table 1 reports 68.1 vs 67.7 top-1
with and without): the predictor keeps the initial lr while every other parameter follows the cosine schedule
(``adjust_learning_rate``: ``param_group['lr'] = init_lr`` for groups with ``fix_lr``), here a parameter group
tagged ``fixed_lr``. Each view goes through the encoder separately. Gradient accumulation is exact:
the loss is a mean of per-image terms; only batch-norm statistics stay per micro-batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from openseer.errors import ConfigError
from openseer.methods.base import (
    CollapseSignal,
    Method,
    ParamGroup,
    RunInfo,
    StepContext,
    StepOutput,
    Tower,
    split_groups,
    z_std_collapse,
)
from openseer.methods.registry import MethodEntry, register_method
from openseer.methods.two_views import per_view, require_two_views
from openseer.models.backbone import feature_dim
from openseer.models.heads import MLP
from openseer.ops.collapse import embedding_std


@dataclass
class Config:
    projector_layers: int = field(default=3, metadata={"help": "Linear layers of the projector (ImageNet 3, CIFAR 2)."})
    hidden_dim: int = field(
        default=0, metadata={"help": "Hidden width of the projector; 0 = the backbone's feature width."}
    )
    output_dim: int = field(default=2048, metadata={"help": "Projection dimension (2048)."})
    predictor_hidden_dim: int = field(
        default=512, metadata={"help": "Bottleneck of the predictor (512 = output_dim / 4)."}
    )
    fix_pred_lr: bool = field(
        default=False,
        metadata={"help": "Predictor at the peak lr throughout, no warm-up or decay (the reference's --fix-pred-lr)."},
    )


def validate(cfg: Any) -> None:
    s = cfg.simsiam
    if s.projector_layers < 1 or s.hidden_dim < 0 or s.output_dim <= 0 or s.predictor_hidden_dim <= 0:
        raise ConfigError("simsiam.projector_layers, output_dim and predictor_hidden_dim must be positive")
    require_two_views(cfg, "simsiam")


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``D(p, z) = -cos(p, sg(z))`` averaged over the batch (eq. 1 with the stop-gradient of eq. 3), float32."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


class SimSiam(Method):
    """Backbone, projector and predictor; the target branch is the same encoder behind a stop-gradient."""

    name = "simsiam"
    towers = (Tower("backbone"), Tower("projector", "head"), Tower("predictor", "head"))
    output_tower = "projector"  # health checks: the projection z the loss compares
    exact_accumulation = True  # per-image loss terms, no batch-coupled term besides batch norm

    def __init__(self, backbone: nn.Module, cfg: Config, info: RunInfo):
        super().__init__()
        self.cfg = cfg
        width = feature_dim(backbone)
        hidden = cfg.hidden_dim or width
        self.backbone = backbone
        dims = [width] + [hidden] * (cfg.projector_layers - 1) + [cfg.output_dim]
        self.projector = MLP(dims, last_bn="plain")
        self.predictor = MLP([cfg.output_dim, cfg.predictor_hidden_dim, cfg.output_dim])

    def param_groups(self, named: Iterable[tuple[str, nn.Parameter]], optim: Any) -> list[ParamGroup]:
        """As the default; with ``fix_pred_lr`` the predictor is its own group at a fixed lr."""
        special = {"predictor.": {"name": "predictor", "fixed_lr": True}} if self.cfg.fix_pred_lr else None
        return split_groups(named, getattr(optim, "exclude_bias_and_norm", True), special)

    def compute_loss(self, crops: list[torch.Tensor], ctx: StepContext, targets: Any = None) -> StepOutput:
        z1, z2 = per_view(lambda x: self.projector(self.backbone(x)), crops)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
        return StepOutput(loss, {"z_std": embedding_std(z1)})

    def collapse_signals(self) -> tuple[CollapseSignal, ...]:
        """The defaults plus this method's collapse signature (docs/methods.md)."""
        return super().collapse_signals() + (
            z_std_collapse(
                self.cfg.output_dim,
                "SimSiam needs the stop-gradient and the predictor (Chen & He 2021, sec. 4): keep the predictor with "
                "its fixed lr (simsiam.fix_pred_lr), BN in the projector, and lower optim.base_lr",
            ),
        )


def build(cfg: Any, backbone: nn.Module, info: RunInfo) -> SimSiam:
    return SimSiam(backbone, cfg.simsiam, info)


ENTRY = register_method(
    MethodEntry(
        "simsiam",
        Config,
        build,
        validate,
        "SimSiam (Chen & He 2021): predictor + stop-gradient, negative cosine; no negatives, no momentum",
    )
)
