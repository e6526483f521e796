"""The method registry: a plain dict from config name to :class:`MethodEntry` (pycls ``builders.py`` style).

A method module calls :func:`register_method` once at import time with its config dataclass (the section
``<name>:`` of a config), its cross-field validation and its builder. ``openseer.config`` reads the registry
to know the method sections; it imports no method. ``openseer.methods`` imports the built-in methods, so
importing it fills the registry; a test or a user's own code may register more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from openseer.methods.base import Method, RunInfo


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config: type  # dataclass: the ``<name>:`` config section
    build: Callable[[Any, nn.Module, RunInfo], Method]  # (Config, backbone, RunInfo) -> Method
    validate: Callable[[Any], None] | None = None  # (Config) -> None, raises ConfigError
    summary: str = ""  # one line for `openseer presets`


METHODS: dict[str, MethodEntry] = {}


def register_method(entry: MethodEntry) -> MethodEntry:
    """Add (or replace) a method; returns the entry so a module can keep it as ``ENTRY``."""
    METHODS[entry.name] = entry
    return entry


def method_configs() -> dict[str, type]:
    """Config section name -> dataclass, for every registered method."""
    return {name: entry.config for name, entry in METHODS.items()}
