"""Backbones come from timm; this module only names them and builds them headless.

A backbone is a timm model created with ``num_classes=0`` so that ``forward(x)`` returns globally pooled
features of size ``model.num_features``. RegNets can also be given by their design-space parameters
(Radosavovic et al. 2020, "Designing Network Design Spaces"), as SEER's RegNetY-256GF and 10B are, through
timm's ``RegNetCfg``.

A *spec* (a small JSON-able dict) is saved next to exported weights so the backbone can be rebuilt anywhere:
``{"timm_name": "regnety_016"}`` or ``{"regnet_cfg": {...}}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import timm
import torch
from torch import nn

from openseer.config import ConfigError, ModelConfig


def backbone_spec(cfg: ModelConfig) -> dict[str, Any]:
    spec = _arch_spec(cfg)
    if not cfg.zero_init_residual:
        spec["zero_init_last"] = False
    return spec


def _arch_spec(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.regnet.depth:
        return {"regnet_cfg": dataclasses.asdict(cfg.regnet)}
    return {"timm_name": cfg.backbone}


def create_backbone_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build a randomly initialised, headless backbone from a spec (see module docstring)."""
    init = {"zero_init_last": spec["zero_init_last"]} if "zero_init_last" in spec else {}
    if "regnet_cfg" in spec:
        from timm.models.regnet import RegNet, RegNetCfg

        return RegNet(RegNetCfg(**spec["regnet_cfg"]), num_classes=0, **init)
    name = spec["timm_name"]
    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[0]}*")[:12]
        raise ConfigError(
            f"model.backbone={name!r} is not a timm model; similar: {', '.join(close) or 'none'}"
        )
    return timm.create_model(name, pretrained=False, num_classes=0, **init)


class _GuardedGroupedConv2d(nn.Conv2d):
    """A strided grouped convolution that runs in float32 when its input is 1x1 under CPU autocast.

    Measured here (torch 2.14.1, CPU): bf16 autocast gives NaN weight gradients for a stride-2 grouped 3x3
    convolution on a 1x1 input (RegNet's last stage when a crop is 16 px), in 4-5 of 5 trials, with or
    without channels_last; 2x2 and larger inputs are fine. At 1x1 this conv costs almost nothing, so the
    float32 detour keeps bf16 speed everywhere else. The class swap keeps the state dict unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.shape[-1] == 1
            and x.shape[-2] == 1
            and torch.is_autocast_enabled("cpu")
        ):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def guard_cpu_bf16_convs(model: nn.Module) -> int:
    """Swap strided grouped convs for :class:`_GuardedGroupedConv2d`; returns how many were swapped."""
    n = 0
    for m in model.modules():
        if type(m) is nn.Conv2d and m.groups > 1 and m.stride != (1, 1):
            m.__class__ = _GuardedGroupedConv2d
            n += 1
    return n


def build_backbone(cfg: ModelConfig) -> nn.Module:
    model = create_backbone_from_spec(backbone_spec(cfg))
    guard_cpu_bf16_convs(model)
    return model  # activation checkpointing is applied from outside (openseer.parallel)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def feature_dim(model: nn.Module) -> int:
    dim = getattr(model, "num_features", None)
    if dim is None:
        with torch.no_grad():
            dim = model(torch.zeros(1, 3, 32, 32)).shape[1]
    return int(dim)
