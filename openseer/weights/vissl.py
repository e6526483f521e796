"""VISSL checkpoints, the layout of the SEER model zoo (facebookresearch/vissl, Goyal et al. 2021).

A VISSL checkpoint nests the model as ``classy_state_dict -> base_model -> model -> {trunk, heads}``.

* ``trunk``: RegNets (``regnet`` and the FSDP ``regnet_v2`` trunks, built from ClassyVision's AnyNet) name the
  stem ``_feature_blocks.conv1.stem.{0,1}`` and block ``i`` of stage ``s`` ``_feature_blocks.res{s+1}.block{s}-{i}``
  (``regnet_v2`` adds a ``block{s}-part{p}`` level for its FSDP groups); inside a block ``proj``/``bn`` is the
  shortcut, ``f.a``/``f.b`` the 1x1 and grouped 3x3 conv+BN, ``f.se.excitation.{0,2}`` the SE convs and
  ``f.c``/``f.final_bn`` the last 1x1 conv and its BN. ResNet trunks are torchvision's names under
  ``_feature_blocks.``.
* ``heads``: ``0.projection_head.{i}`` (Linear [BN] ReLU ... Linear, VISSL ``swav_head``) and
  ``0.prototypes0`` (a bias-free Linear, K x d) for SwAV; ``0.clf.0`` for linear classifiers of fine-tuned
  models, which openseer does not use.

The tables below (the RegNet one from :mod:`openseer.weights.regnet_keys`) map these names onto timm's RegNet /
ResNet and onto openseer's SwAV head (``head.mlp.{i}``, ``prototypes.weight``), so SwAV training continues with
the released prototypes.
"""

from __future__ import annotations

from typing import Any

import torch

from openseer.weights.mapping import Imported, KeyTable, WeightsError, describe, fold_bias_into_batchnorm
from openseer.weights.regnet_keys import import_table

EXPECTED = "a VISSL checkpoint (classy_state_dict -> base_model -> model -> trunk/heads)"

REGNET_TRUNK = import_table("vissl", "VISSL RegNet trunk")  # ClassyVision AnyNet names -> timm's RegNet

RESNET_TRUNK = KeyTable(
    "VISSL ResNet trunk",
    [
        (r"_feature_blocks\.(conv1|bn1|layer[1-4])\.", r"\1."),
    ],
)

SWAV_HEAD = KeyTable(
    "VISSL swav_head",
    [
        (r"0\.projection_head\.(\d+)\.", r"head.mlp.\1."),
        (r"0\.prototypes0\.", "prototypes."),
        (r"0\.prototypes\d+\.", None),  # checked below: openseer has one prototype set
        (r"\d+\.clf\.", None),  # linear classifier of a fine-tuned model
        (r"\d+\.(channel_bn|clf_bn)\.", None),
    ],
)


def matches(obj: Any) -> bool:
    return isinstance(obj, dict) and "classy_state_dict" in obj


def _model(obj: Any, where: str) -> dict[str, Any]:
    try:
        model = obj["classy_state_dict"]["base_model"]["model"]
    except (KeyError, TypeError):
        raise WeightsError(f"{where}: expected {EXPECTED}, found {describe(obj)} without that nesting") from None
    if not isinstance(model, dict) or not isinstance(model.get("trunk"), dict) or not model["trunk"]:
        raise WeightsError(f"{where}: expected {EXPECTED}, found a model without trunk weights")
    return model


def trunk_table(trunk: dict[str, torch.Tensor]) -> KeyTable:
    if any(k.startswith("_feature_blocks.conv1.stem.") for k in trunk):
        return REGNET_TRUNK
    if "_feature_blocks.conv1.weight" in trunk:
        return RESNET_TRUNK
    raise WeightsError(f"VISSL trunk with keys like {list(trunk)[:2]}: openseer reads RegNet and ResNet trunks only")


def convert(obj: Any, where: str) -> Imported:
    """The backbone (timm names) and the SwAV head + prototypes (openseer names) of a VISSL checkpoint."""
    model = _model(obj, where)
    trunk = model["trunk"]
    backbone, _ = trunk_table(trunk).apply(trunk, where)
    heads, dropped = SWAV_HEAD.apply(model.get("heads") or {}, where)
    extra = [k for k in dropped if "prototypes" in k and not k.endswith("prototypes0.weight")]
    if extra:
        raise WeightsError(f"{where}: has {len(extra) + 1} prototype sets (multi-head SwAV); openseer's SwAV has one")
    _fold_head_biases(heads)
    notes = [f"ignored VISSL head weights {dropped[:4]}"] if dropped else []
    return Imported(source=where, format="vissl", backbone=backbone, heads=heads, notes=notes)


def _fold_head_biases(heads: dict[str, torch.Tensor]) -> None:
    """VISSL's head has Linear(bias) -> BatchNorm1d; openseer's has a bias-free Linear before a BN."""
    indices = sorted({int(k.split(".")[2]) for k in heads if k.startswith("head.mlp.")})
    for i in indices:
        if f"head.mlp.{i + 1}.running_mean" in heads:
            fold_bias_into_batchnorm(heads, f"head.mlp.{i}", f"head.mlp.{i + 1}")
