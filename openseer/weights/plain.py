"""Plain state dicts (torchvision, timm) and openseer run directories.

* timm: a state dict of the timm model itself; only the classifier (``pretrained_cfg["classifier"]``) is dropped
  when the backbone is headless (done when loading, where the target model is known).
* torchvision ResNets use timm's ResNet names (``conv1``, ``bn1``, ``layer1..4``; ``fc`` is the classifier).
* torchvision RegNets (ported from ClassyVision) name the stem ``stem.{0,1}`` and block ``i`` of stage ``s``
  ``trunk_output.block{s}.block{s}-{i}`` with ``proj.{0,1}``, ``f.a.{0,1}``, ``f.b.{0,1}``, ``f.se.fc{1,2}``,
  ``f.c.{0,1}`` inside; :data:`TORCHVISION_REGNET` maps them onto timm's RegNet (from the one RegNet key table,
  :mod:`openseer.weights.regnet_keys`, which the torchvision export reads backwards).
* openseer: a run directory (``backbone.safetensors`` + ``backbone.json``, ``checkpoints/last.pt``), one of
  those files, or a training checkpoint: the backbone, its spec and, from a training checkpoint, the method's
  heads (``head.*``, ``prototypes.*``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from openseer.io import BACKBONE_SPEC, BACKBONE_WEIGHTS
from openseer.weights.mapping import Imported, KeyTable, WeightsError, describe, read_file, strip_prefix, tensors_only
from openseer.weights.regnet_keys import import_table

EXPECTED = "a state dict (name -> tensor) of a timm or torchvision model"

TORCHVISION_REGNET = import_table("torchvision", "torchvision RegNet", extra=[(r"fc\.", None)])  # fc: classifier

TORCHVISION_RESNET = KeyTable(
    "torchvision ResNet",
    [
        (r"(conv1|bn1|layer[1-4])\.", r"\1."),
        (r"fc\.", None),
    ],
)

TIMM = KeyTable("timm", [(r"", "")])  # timm's own names; the classifier is dropped against the target model


def convert(obj: Any, where: str, fmt: str = "auto") -> Imported:
    """A plain state dict; ``fmt`` is ``torchvision``, ``timm`` or ``auto`` (torchvision RegNet keys decide)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif (
        isinstance(obj, dict)
        and isinstance(obj.get("model"), dict)
        and not any(torch.is_tensor(v) for v in obj.values())
    ):
        obj = obj["model"]
    state = strip_prefix(tensors_only(obj, where, EXPECTED), "module.")
    tv_regnet = any(k.startswith("trunk_output.") for k in state)
    if fmt == "torchvision" or tv_regnet:
        table = TORCHVISION_REGNET if tv_regnet else TORCHVISION_RESNET
        fmt = "torchvision"
    else:
        table, fmt = TIMM, "timm"
    backbone, dropped = table.apply(state, where)
    notes = [f"ignored the classifier {dropped}"] if dropped else []
    return Imported(source=where, format=fmt, backbone=backbone, notes=notes)


def is_openseer_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "backbone_spec" in obj


def _exported_prefix(obj: dict[str, Any]) -> str:
    """Where the method keeps the backbone it exports ("backbone", "teacher.backbone" for DINO-style methods)."""
    spec = obj.get("backbone_spec") or {}
    if spec.get("exported"):
        return spec["exported"] + "."
    keys = obj["model"].keys()
    for prefix in ("backbone.", "teacher.backbone."):
        if any(k.startswith(prefix) for k in keys):
            return prefix
    return "backbone."


def convert_openseer_checkpoint(obj: dict[str, Any], where: str) -> Imported:
    model = obj["model"]
    prefix = _exported_prefix(obj)
    backbone = {k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)}
    if not backbone:
        raise WeightsError(f"{where}: expected an openseer checkpoint with {prefix}* weights, found {describe(model)}")
    heads = {
        k: v
        for k, v in model.items()
        if not k.startswith(prefix) and not k.endswith("_extra_state") and torch.is_tensor(v)
    }
    spec = obj.get("backbone_spec")
    return Imported(
        source=where, format="openseer", backbone=backbone, heads=heads, spec=spec, config=obj.get("config") or {}
    )


def convert_openseer_dir(path: Path, with_heads: bool) -> Imported:
    """A run directory: its training checkpoint when heads are wanted, else its exported backbone."""
    last = path / "checkpoints" / "last.pt"
    exported = path / BACKBONE_WEIGHTS
    if last.is_file() and (with_heads or not exported.is_file()):
        return convert_openseer_checkpoint(read_file(last, "an openseer training checkpoint"), str(last))
    if not exported.is_file():
        raise WeightsError(
            f"{path}: expected an openseer run directory ({BACKBONE_WEIGHTS} or checkpoints/last.pt), found neither"
        )
    return convert_openseer_safetensors(exported)


def convert_openseer_safetensors(path: Path) -> Imported:
    spec_path = path.with_name(BACKBONE_SPEC)
    weights = read_file(path, "backbone weights (safetensors)")
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else None
    cfg_path = path.with_name("config.yaml")
    config = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.is_file() else {}
    fmt = "openseer" if spec is not None else "timm"
    return Imported(source=str(path), format=fmt, backbone=weights, spec=spec, config=config)
