"""Loading the modules that fill a registry (methods, evaluations): the built-in ones, then plugins named in an
environment variable or declared as entry points by an installed package (pycls / timm style: a module
registers itself when imported)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from importlib.metadata import entry_points


def import_plugins(builtin: Iterable[str], env_var: str, group: str) -> None:
    """Import the modules ``builtin``, those named in ``$env_var`` (comma-separated) and the entry points of
    ``group``; each registers what it defines."""
    for module in builtin:
        importlib.import_module(module)
    for module in filter(None, (m.strip() for m in os.environ.get(env_var, "").split(","))):
        importlib.import_module(module)
    for ep in entry_points(group=group):
        ep.load()
