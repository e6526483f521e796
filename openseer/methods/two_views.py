"""What the two-view methods (SimCLR, MoCo v3, BYOL, SimSiam, Barlow Twins, VICReg) share: the crop check and
per-view forward."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from openseer.errors import ConfigError
from openseer.methods.base import Method, Tower

BATCH_NORM_NEEDS = "batch norm in the heads needs at least 2 images per process"


def require_two_views(cfg: Any, name: str, batch_reason: str = BATCH_NORM_NEEDS) -> None:
    """Exactly two global crops per image, and 2+ images per process (``batch_reason`` says why)."""
    if cfg.aug.global_crops != 2 or cfg.aug.local_crops != 0:
        raise ConfigError(
            f"{name} compares exactly 2 views of each image: set aug.global_crops=2 aug.local_crops=0 "
            f"(got {cfg.aug.global_crops} and {cfg.aug.local_crops}); the {name}-* presets do"
        )
    if cfg.train.batch_size < 2:
        raise ConfigError(f"{name}: train.batch_size={cfg.train.batch_size}; {batch_reason}: raise train.batch_size")


def per_view(net: nn.Module, crops: list[torch.Tensor]) -> list[torch.Tensor]:
    """``net`` applied to each view separately, as the MoCo v3, BYOL and SimSiam references do (batch-norm
    statistics are per view; SimCLR instead concatenates the views)."""
    return [net(x) for x in crops]


class BackboneProjector(Method):
    """A backbone and one projector trained on two views by a batch-statistics loss (Barlow Twins, VICReg):
    their towers, and why their gradient accumulation cannot be exact (the loss needs the whole batch)."""

    towers = (Tower("backbone"), Tower("projector", "head"))
    output_tower = "projector"  # health checks: the projection z the loss compares
    exact_accumulation = False

    def __init__(self, backbone: nn.Module, cfg: Any, projector: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = projector
