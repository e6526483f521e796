"""``openseer presets``: the built-in presets, one line each (`openseer.config.list_presets`)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents
from openseer.config import list_presets


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    sub.add_parser("presets", help="list the built-in presets").set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for name, text in list_presets().items():
        print(f"{name:<24} {text}")
    return 0
