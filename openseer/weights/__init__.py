"""Weights in and out: start from SEER (VISSL), SwAV, DINO, timm, torchvision or openseer weights; export to
timm, torchvision, ONNX and TorchScript. See docs/weights.md.

``sources.read_source`` turns a SOURCE string into timm-named tensors, ``sources.init_method_from`` initialises
a method before training, ``sources.backbone_from_source`` builds an evaluation backbone, and
``export.export_run`` writes a run's backbone in another format.
"""

from openseer.weights.mapping import Imported, WeightsError
from openseer.weights.sources import backbone_from_source, infer_spec, init_method_from, read_source

__all__ = ["Imported", "WeightsError", "backbone_from_source", "infer_spec", "init_method_from", "read_source"]
