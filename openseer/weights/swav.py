"""facebookresearch/swav checkpoints (Caron et al. 2020).

``main_swav.py`` saves ``{"epoch", "state_dict", "optimizer", ...}`` from a DistributedDataParallel model, and
the released model-zoo files (``swav_800ep_pretrain.pth.tar``) are that ``state_dict`` alone: every key starts
with ``module.``. The model (``src/resnet50.py``) is a torchvision-named ResNet (``conv1``, ``bn1``,
``layer1..4``; the extra ``padding`` module has no weights) plus

* ``projection_head``: ``Linear(bias) -> BatchNorm1d -> ReLU -> Linear`` (``hidden_mlp > 0``) or a single
  ``Linear`` (``hidden_mlp == 0``), output L2-normalised;
* ``prototypes``: a bias-free ``Linear(output_dim, K)`` (``MultiPrototypes`` with ``prototypes{i}`` for
  several sets, which openseer does not train).

Mapped onto timm's ResNet (same names) and openseer's SwAV head (``head.mlp.{i}``, ``prototypes.weight``).
"""

from __future__ import annotations

from typing import Any

import torch

from openseer.weights.mapping import (
    Imported,
    KeyTable,
    WeightsError,
    describe,
    fold_bias_into_batchnorm,
    strip_prefix,
    tensors_only,
)

EXPECTED = "a facebookresearch/swav checkpoint (module.* ResNet + projection_head + prototypes)"

TABLE = KeyTable(
    "facebookresearch/swav",
    [
        (r"(conv1|bn1|layer[1-4])\.", r"backbone.\1."),
        (r"projection_head\.(weight|bias)$", r"head.mlp.0.\1"),  # hidden_mlp == 0: a single Linear
        (r"projection_head\.(\d+)\.", r"head.mlp.\1."),
        (r"prototypes\.(weight)$", r"prototypes.\1"),
        (r"prototypes\.prototypes\d+\.", None),  # MultiPrototypes: refused below
        (r"fc\.", None),  # a linear-eval classifier, if any
    ],
)


def matches(obj: Any) -> bool:
    state = _state(obj)
    if not isinstance(state, dict):
        return False
    keys = [k[len("module.") :] if k.startswith("module.") else k for k in state]
    return any(k.startswith(("projection_head.", "prototypes.")) for k in keys) and "layer1.0.conv1.weight" in keys


def _state(obj: Any) -> Any:
    return obj.get("state_dict", obj) if isinstance(obj, dict) else obj


def convert(obj: Any, where: str) -> Imported:
    state = tensors_only(_state(obj), where, EXPECTED)
    state = strip_prefix(state, "module.")
    if "layer1.0.conv1.weight" not in state:
        raise WeightsError(f"{where}: expected {EXPECTED}, found {describe(state)}")
    renamed, dropped = TABLE.apply(state, where)
    if any("prototypes" in k for k in dropped):
        raise WeightsError(f"{where}: holds several prototype sets (MultiPrototypes); openseer's SwAV has one")
    backbone = {k[len("backbone.") :]: v for k, v in renamed.items() if k.startswith("backbone.")}
    heads = {k: v for k, v in renamed.items() if not k.startswith("backbone.")}
    if "head.mlp.1.running_mean" in heads:
        fold_bias_into_batchnorm(heads, "head.mlp.0", "head.mlp.1")
    notes = [f"ignored {dropped}"] if dropped else []
    return Imported(source=where, format="swav", backbone=backbone, heads=heads, notes=notes)


def head_dims(heads: dict[str, torch.Tensor]) -> list[int]:
    """[in, hidden..., out] widths of a converted projection head (for error messages and configs)."""
    linears = sorted(
        (int(k.split(".")[2]), v)
        for k, v in heads.items()
        if k.startswith("head.mlp.") and k.endswith("weight") and v.ndim == 2
    )
    return [linears[0][1].shape[1], *(v.shape[0] for _, v in linears)] if linears else []
