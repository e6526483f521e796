"""The method registry: a plain dict from config name to :class:`MethodEntry` (pycls ``builders.py`` style).

A method module calls :func:`register_method` once at import time with its config dataclass (the section
``<name>:`` of a config), its cross-field validation and its builder. ``openseer.config`` (a leaf below the
methods) reads the registry through :func:`openseer.config.install_method_registry`, called at the bottom of this
module; it imports no method. :func:`load_methods` imports the built-in methods listed
in ``BUILTIN`` (adding a method = one file + one line there) and any plugin module named in the environment
variable ``OPENSEER_METHODS`` (comma-separated module names) or in the ``openseer.methods`` entry-point group
of an installed package; a test or a user's own code may also call :func:`register_method` directly.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from openseer.config import install_method_registry
from openseer.methods.base import Method, RunInfo

# modules under openseer.methods that register a built-in method
BUILTIN = ("swav", "dino", "simclr", "mocov3", "byol", "simsiam", "barlowtwins", "vicreg", "deepclusterv2")
PLUGIN_ENV = "OPENSEER_METHODS"


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config: type  # dataclass: the ``<name>:`` config section
    build: Callable[[Any, nn.Module, RunInfo], Method]  # (Config, backbone, RunInfo) -> Method
    validate: Callable[[Any], None] | None = None  # (Config) -> None, raises ConfigError
    summary: str = ""  # one line for `openseer presets`
    # (Config, pool images, global batch) -> notes: fills the section's "0 = from the run's size" fields in place
    # before the method is built, so config.yaml holds the values used (resume, report and export rebuild them)
    resolve: Callable[[Any, int, int], list[str]] | None = None


METHODS: dict[str, MethodEntry] = {}
_loaded = False


def register_method(entry: MethodEntry) -> MethodEntry:
    """Add (or replace) a method; returns the entry so a module can keep it as ``ENTRY``."""
    METHODS[entry.name] = entry
    return entry


def load_methods() -> dict[str, MethodEntry]:
    """Import the built-in and plugin methods once (each registers itself); returns :data:`METHODS`."""
    global _loaded
    if not _loaded:
        _loaded = True  # first: a method module that reads the registry while importing does not recurse
        for name in BUILTIN:
            importlib.import_module(f"openseer.methods.{name}")
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(","))):
            importlib.import_module(module)
        for ep in entry_points(group="openseer.methods"):
            ep.load()
    return METHODS


def method_configs() -> dict[str, type]:
    """Config section name -> dataclass, for every registered method."""
    return {name: entry.config for name, entry in load_methods().items()}


def get_method(name: str) -> MethodEntry:
    """The entry of a registered method (KeyError names the known ones)."""
    methods = load_methods()
    if name not in methods:
        raise KeyError(f"method {name!r} is not registered; methods: {', '.join(methods)}")
    return methods[name]


install_method_registry(load_methods)
