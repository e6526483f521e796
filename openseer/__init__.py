"""openseer: self-supervised pretraining of vision backbones (SwAV + RegNet, the SEER recipe).

The Python API (:mod:`openseer.api`) is the command line's code path::

    import openseer
    openseer.pretrain("cifar10", data="images/", out="runs/a", init="timm:regnety_016.tv2_in1k")
    backbone = openseer.load_backbone("runs/a")
"""

__version__ = "0.1.0"

from openseer.api import build_config, curate, embed, evaluate, load_backbone, pretrain  # noqa: E402

__all__ = ["build_config", "curate", "embed", "evaluate", "load_backbone", "pretrain"]
