"""Backbones (timm) and heads."""

from openseer.models.backbone import backbone_spec, build_backbone, create_backbone_from_spec
from openseer.models.heads import ProjectionMLP, Prototypes

__all__ = ["backbone_spec", "build_backbone", "create_backbone_from_spec", "ProjectionMLP", "Prototypes"]
