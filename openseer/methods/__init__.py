"""Self-supervised methods, one file each, registered in :mod:`openseer.methods.registry`.

``from openseer.methods import METHODS`` gives the registry dict (name -> ``MethodEntry``) with the built-in
and plugin methods loaded. The contract every method follows is :class:`openseer.methods.base.Method`.
"""

from typing import Any

from openseer.methods.base import Method, ParamGroup, RunInfo, StepContext, StepOutput, Tower
from openseer.methods.registry import MethodEntry, get_method, load_methods, register_method


def __getattr__(name: str) -> Any:  # METHODS on first use, so that importing this package imports no method
    if name == "METHODS":
        return load_methods()
    raise AttributeError(f"module 'openseer.methods' has no attribute {name!r}")


__all__ = [
    "METHODS",
    "Method",
    "MethodEntry",
    "ParamGroup",
    "RunInfo",
    "StepContext",
    "StepOutput",
    "Tower",
    "get_method",
    "load_methods",
    "register_method",
]
