"""Self-supervised methods, one file each. ``METHODS`` maps a config name to its module.

A method module exposes ``Config`` (a dataclass of its settings, a section of the main config),
``validate(cfg)`` (cross-field checks) and ``build(cfg, backbone) -> nn.Module``.
"""

from openseer.methods import byol, mocov3, simclr, simsiam, swav  # noqa: F401  (registers each method)

METHODS = {"swav": swav}

__all__ = ["METHODS"]
