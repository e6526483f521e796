"""A backbone from any SOURCE: openseer's own run directories and files through :mod:`openseer.checkpoint`, every
other SOURCE (``timm:`` tags, VISSL / SwAV / DINO / torchvision / timm files, ``FORMAT:FILE``) through the
converters of :mod:`openseer.weights.sources`.

This is where evaluation, the report and the API load what they are given. The dependency points from weights
down to checkpoints (docs/architecture.md): :mod:`openseer.checkpoint` knows only openseer's layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from openseer import checkpoint
from openseer.errors import CheckpointError
from openseer.weights.sources import backbone_and_config, infer_spec, is_openseer_path, read_source, source_path


def is_openseer_source(source: str | Path) -> bool:
    """A run directory, an exported ``backbone.safetensors`` or an openseer training checkpoint (``.pt``)."""
    return is_openseer_path(source) or checkpoint.is_training_checkpoint_file(source)


def resolve_source(source: str | Path) -> Path:
    """The file a SOURCE's weights are read from: a run dir -> its exported backbone, else its last training
    checkpoint; ``FORMAT:FILE`` -> FILE; a file -> itself. A ``timm:`` tag has no file (CheckpointError)."""
    path = source_path(source)
    if path is None:
        raise CheckpointError(f"{source} is a timm tag, not a file or run directory")
    return checkpoint.resolve_checkpoint(path)


def load_backbone(source: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(backbone in eval mode on CPU, the run's config dict or {}) of any SOURCE."""
    if is_openseer_source(source):
        return checkpoint.load_backbone(source)
    return backbone_and_config(source)


def read_backbone_spec(source: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(timm spec, run config dict or {}) of any SOURCE's backbone, without building the backbone."""
    if is_openseer_source(source):
        return checkpoint.read_backbone_spec(source)
    imported = read_source(source, with_heads=False)
    return infer_spec(imported), imported.config
