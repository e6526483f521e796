"""Backbones come from timm; this module only names them and builds them headless.

A backbone is a timm model created with ``num_classes=0`` so that ``forward(x)`` returns globally pooled
features of size ``model.num_features``. RegNets can also be given by their design-space parameters
(Radosavovic et al. 2020, "Designing Network Design Spaces"), as SEER's RegNetY-256GF and 10B are, through
timm's ``RegNetCfg``.

A *spec* (a small JSON-able dict) is saved next to exported weights so the backbone can be rebuilt anywhere:
``{"timm_name": "regnety_016"}`` or ``{"regnet_cfg": {...}}``.

Vision Transformers (timm ``vit_*``) are built with ``dynamic_img_size=True`` so that crops of any size that
the patch size divides go through (timm interpolates the position embeddings bicubically, as DINO's
``interpolate_pos_encoding`` does); their feature is the final-norm CLS token. ``model.img_size`` and
``model.patch_size`` make small-image variants (e.g. patch 4 at 32 px) and are recorded in the spec.
``model.vit_style: mocov3`` builds MoCo v3's ViT (Chen, Xie, He 2021; facebookresearch/moco-v3 ``vits.py``
``VisionTransformerMoCo``) through timm's ``VisionTransformer`` arguments: 12 heads, a fixed 2-D sin-cos
position embedding (:func:`sincos_2d_position_embedding`), Xavier-uniform linear layers (Q, K and V each as
its own matrix), zero biases, a ``cls_token`` of std 1e-6 and a Xavier-uniform patch projection.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import timm
import torch
from timm.models import is_model, model_entrypoint
from timm.models.regnet import RegNet, RegNetCfg
from torch import nn

from openseer.config import ModelConfig
from openseer.errors import ConfigError

VIT_MODULES = ("timm.models.vision_transformer",)
_SPEC_KWARGS = ("zero_init_last", "img_size", "patch_size", "dynamic_img_size")
MOCOV3_VIT_HEADS = 12  # vits.py: num_heads=12 for ViT-S and ViT-B alike (timm's ViT-S has 6)


def is_vit(name: str) -> bool:
    """Whether a timm model name is a Vision Transformer of timm's ``vision_transformer`` module."""
    return is_model(name) and model_entrypoint(name).__module__ in VIT_MODULES


def backbone_spec(cfg: ModelConfig) -> dict[str, Any]:
    spec = _arch_spec(cfg)
    if not cfg.zero_init_residual and not is_vit(cfg.backbone):
        spec["zero_init_last"] = False
    if "timm_name" in spec and is_vit(cfg.backbone):
        spec["dynamic_img_size"] = True
        if cfg.img_size:
            spec["img_size"] = cfg.img_size
        if cfg.patch_size:
            spec["patch_size"] = cfg.patch_size
        if cfg.vit_style != "timm":
            spec["vit_style"] = cfg.vit_style
    return spec


def vit_patch_size(cfg: ModelConfig) -> int | None:
    """The patch side of a ViT backbone (``model.patch_size`` or the name's ``patchN``); None for convnets."""
    if cfg.regnet.depth or not is_vit(cfg.backbone):
        return None
    if cfg.patch_size:
        return cfg.patch_size
    found = re.search(r"patch(\d+)", cfg.backbone)
    if found:
        return int(found.group(1))
    with torch.device("meta"):  # a name without "patchN": ask the model itself, without allocating weights
        model = timm.create_model(cfg.backbone, pretrained=False, num_classes=0)
    return int(model.patch_embed.patch_size[0])


def check_crop_sizes(cfg: ModelConfig, sizes: dict[str, int]) -> None:
    """A ViT's patch size must divide every crop size: raise one ConfigError naming both numbers."""
    patch = vit_patch_size(cfg)
    if patch is None:
        return
    for key, size in sizes.items():
        if size % patch:
            raise ConfigError(
                f"{key}={size} is not divisible by the patch size {patch} of {cfg.backbone}; choose a crop size "
                f"that is a multiple of {patch} or set model.patch_size"
            )


def _arch_spec(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.regnet.depth:
        return {"regnet_cfg": dataclasses.asdict(cfg.regnet)}
    return {"timm_name": cfg.backbone}


def create_backbone_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build a randomly initialised, headless backbone from a spec (see module docstring)."""
    return _create(spec)


def _create(spec: dict[str, Any], **train_kwargs: Any) -> nn.Module:
    init = {k: spec[k] for k in _SPEC_KWARGS if k in spec}
    if "regnet_cfg" in spec:
        return RegNet(RegNetCfg(**spec["regnet_cfg"]), num_classes=0, **init, **train_kwargs)
    name = spec["timm_name"]
    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[0]}*")[:12]
        raise ConfigError(f"model.backbone={name!r} is not a timm model; similar: {', '.join(close) or 'none'}")
    if spec.get("vit_style") == "mocov3":
        init.update(num_heads=MOCOV3_VIT_HEADS, weight_init="moco")
    model = timm.create_model(name, pretrained=False, num_classes=0, **init, **train_kwargs)
    if spec.get("vit_style") == "mocov3":
        mocov3_vit_(model)
    return model


def sincos_2d_position_embedding(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo v3's fixed position embedding (vits.py ``build_2d_sincos_position_embedding``), (1, 1 + h w, dim).

    A zero row for the class token, then per patch ``[sin(a w), cos(a w), sin(b w), cos(b w)]`` with
    ``w_k = temperature^(-k / (dim / 4))`` and (a, b) the two grid coordinates in the reference's
    ``meshgrid(grid_w, grid_h)`` order (``indexing="ij"``), so the rows match its weights exactly.
    """
    if dim % 4:
        raise ConfigError(f"a 2-D sin-cos position embedding needs an embedding width divisible by 4, got {dim}")
    a, b = torch.meshgrid(
        torch.arange(grid_w, dtype=torch.float32), torch.arange(grid_h, dtype=torch.float32), indexing="ij"
    )
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_a, out_b = torch.outer(a.flatten(), omega), torch.outer(b.flatten(), omega)
    patches = torch.cat([out_a.sin(), out_a.cos(), out_b.sin(), out_b.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), patches])[None]


@torch.no_grad()
def mocov3_vit_(model: nn.Module) -> None:
    """The parts of ``VisionTransformerMoCo.__init__`` that timm's ``weight_init="moco"`` leaves out: the fixed
    sin-cos position embedding (no gradient) and the Xavier-uniform patch projection with a zero bias."""
    if getattr(model, "num_prefix_tokens", 1) != 1 or model.pos_embed is None:
        raise ConfigError("model.vit_style=mocov3 needs a ViT with exactly one class token and a position embedding")
    grid_h, grid_w = model.patch_embed.grid_size
    model.pos_embed.copy_(sincos_2d_position_embedding(grid_h, grid_w, model.embed_dim))
    model.pos_embed.requires_grad_(False)
    proj = model.patch_embed.proj
    bound = math.sqrt(6.0 / float(proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] + model.embed_dim))
    nn.init.uniform_(proj.weight, -bound, bound)
    if proj.bias is not None:
        nn.init.zeros_(proj.bias)


class _GuardedGroupedConv2d(nn.Conv2d):
    """A strided grouped convolution that runs in float32 when its input is 1x1 under CPU autocast.

    Measured here (torch 2.14.1, CPU): bf16 autocast gives NaN weight gradients for a stride-2 grouped 3x3
    convolution on a 1x1 input (RegNet's last stage when a crop is 16 px), in 4-5 of 5 trials, with or
    without channels_last; 2x2 and larger inputs are fine. At 1x1 this conv costs almost nothing, so the
    float32 detour keeps bf16 speed everywhere else. The class swap keeps the state dict unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.shape[-1] == 1 and x.shape[-2] == 1 and torch.is_autocast_enabled("cpu"):
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
    """The backbone to train: the spec's model plus training-only settings (stochastic depth)."""
    extra = {"drop_path_rate": cfg.drop_path_rate} if cfg.drop_path_rate else {}
    model = _create(backbone_spec(cfg), **extra)
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
