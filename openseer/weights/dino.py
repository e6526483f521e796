"""facebookresearch/dino checkpoints (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers").

``main_dino.py`` saves ``{"student", "teacher", "optimizer", "epoch", "args", "dino_loss"}``. Student and teacher
are ``MultiCropWrapper`` s: ``backbone.*`` (a DINO ViT, whose names are timm's, or a torchvision ResNet with
``fc = Identity``) and ``head.*`` (``DINOHead``: ``mlp.{i}`` Linear [BN] GELU ... Linear, then the
weight-normalised ``last_layer`` with ``weight_g`` / ``weight_v``). The student is wrapped in DDP (``module.``
prefix); the teacher too when the backbone has batch norms. ``args`` is an ``argparse.Namespace`` (allowed by
the safe loader), ``dino_loss`` holds the teacher ``center``.

The teacher is read by default, as DINO's own evaluations do (``--checkpoint_key teacher``). The backbone is
mapped onto timm (ResNet / ViT); the head keeps DINO's names under ``head.`` and the centre is ``center``, so a
DINO method can continue from them.
"""

from __future__ import annotations

from typing import Any

import torch

from openseer.weights.mapping import Imported, KeyTable, WeightsError, describe, strip_prefix, tensors_only

EXPECTED = "a facebookresearch/dino checkpoint ({'teacher': ..., 'student': ...} with backbone.* and head.*)"

TABLE = KeyTable(
    "facebookresearch/dino",
    [
        # torchvision ResNet backbone (fc is an Identity in DINO)
        (r"backbone\.(conv1|bn1|layer[1-4])\.", r"backbone.\1."),
        (r"backbone\.fc\.", None),
        # DINO ViT backbone (vision_transformer.py): timm's names
        (r"backbone\.(cls_token|pos_embed)$", r"backbone.\1"),
        (r"backbone\.(patch_embed\.proj|blocks\.\d+|norm)\.", r"backbone.\1."),
        (r"backbone\.head\.", None),
        # DINOHead
        (r"head\.mlp\.", "head.mlp."),
        (r"head\.last_layer\.(weight_g|weight_v|weight)$", r"head.last_layer.\1"),
    ],
)


def matches(obj: Any) -> bool:
    return isinstance(obj, dict) and ("teacher" in obj or "student" in obj)


def convert(obj: Any, where: str, checkpoint_key: str = "teacher") -> Imported:
    if not isinstance(obj, dict) or checkpoint_key not in obj:
        raise WeightsError(f"{where}: expected {EXPECTED}, found {describe(obj)} (no {checkpoint_key!r})")
    state = tensors_only(obj[checkpoint_key], where, EXPECTED)
    state = strip_prefix(state, "module.")
    if not any(k.startswith("backbone.") for k in state):
        raise WeightsError(f"{where}: {checkpoint_key} has no backbone.* weights; found keys like {list(state)[:3]}")
    renamed, dropped = TABLE.apply(state, where)
    backbone = {k[len("backbone.") :]: v for k, v in renamed.items() if k.startswith("backbone.")}
    heads = {k: v for k, v in renamed.items() if k.startswith("head.")}
    center = (obj.get("dino_loss") or {}).get("center") if isinstance(obj.get("dino_loss"), dict) else None
    if torch.is_tensor(center):
        heads["center"] = center
    notes = [f"read the {checkpoint_key}"] + ([f"ignored {dropped}"] if dropped else [])
    return Imported(source=where, format="dino", backbone=backbone, heads=heads, notes=notes)


def last_layer_weight(heads: dict[str, torch.Tensor]) -> torch.Tensor:
    """The effective last-layer weight ``g * v / ||v||`` (row-wise), as ``torch.nn.utils.weight_norm`` computes."""
    g, v = heads["head.last_layer.weight_g"], heads["head.last_layer.weight_v"]
    return g * v / v.norm(dim=1, keepdim=True)
