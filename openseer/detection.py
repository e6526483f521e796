"""A pretrained backbone in torchvision's detectors (Faster / Mask R-CNN): multi-scale maps + FPN.

timm describes every backbone's stages in ``model.feature_info`` (module name, channels, stride); torchvision's
``BackboneWithFPN`` runs a model's children in order up to the requested ones (``IntermediateLayerGetter``),
which timm's convnets (RegNet: ``stem, s1..s4``; ResNet: ``conv1 .. layer4``) allow. So the adapter is just the
table of stage names and channels that timm already holds.

Example::

    from torchvision.models.detection import FasterRCNN
    from openseer.detection import fpn_backbone

    detector = FasterRCNN(fpn_backbone("runs/first"), num_classes=3)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from openseer.weights.mapping import WeightsError
from openseer.weights.sources import backbone_from_source


def stage_info(backbone: nn.Module) -> list[dict]:
    """timm's ``feature_info`` of a backbone: one dict per stage with ``module``, ``num_chs``, ``reduction``."""
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise WeightsError(f"{type(backbone).__name__} has no timm feature_info; the FPN adapter needs a timm convnet")
    return [dict(i) for i in info]


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by torchvision's FrozenBatchNorm2d with the same statistics (detection's
    default: batches of a few large images give useless batch statistics)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def fpn_backbone(
    source: str | Path | nn.Module,
    stages: Sequence[int] = (1, 2, 3, 4),
    out_channels: int = 256,
    frozen_batchnorm: bool = True,
    trainable_stages: int = 5,
) -> BackboneWithFPN:
    """A torchvision ``BackboneWithFPN`` over the pretrained backbone of ``source`` (run dir or any SOURCE).

    Args:
        source: run directory, SOURCE string (see :mod:`openseer.weights.sources`) or a timm backbone.
        stages: indices into timm's ``feature_info`` (0 is the stem at stride 2; 1..4 the stages at strides
            4..32 for RegNets and ResNets).
        out_channels: FPN channels (torchvision's detectors use 256).
        frozen_batchnorm: replace batch norms by FrozenBatchNorm2d, as torchvision's detection backbones do.
        trainable_stages: how many of the last feature_info entries stay trainable (5 = all, 0 = none).
    """
    if isinstance(source, nn.Module):
        backbone = source
    else:
        backbone, _ = backbone_from_source(source, log=lambda s: None)
    info = stage_info(backbone)
    if not stages or any(not 0 <= i < len(info) for i in stages):
        raise WeightsError(f"stages={list(stages)}: the backbone has feature stages 0..{len(info) - 1}")
    if frozen_batchnorm:
        freeze_batchnorm(backbone)
    children = [name for name, _ in backbone.named_children()]
    frozen: set[str] = set()
    if trainable_stages < len(info):  # freeze every child up to the last frozen stage (stem first)
        last_frozen = info[len(info) - trainable_stages - 1]["module"].split(".")[0]
        frozen = set(children[: children.index(last_frozen) + 1])
    for name, param in backbone.named_parameters():
        param.requires_grad_(name.split(".")[0] not in frozen)
    return_layers = {info[i]["module"]: str(n) for n, i in enumerate(stages)}
    in_channels = [info[i]["num_chs"] for i in stages]
    return BackboneWithFPN(backbone, return_layers, in_channels, out_channels, extra_blocks=LastLevelMaxPool())
