"""``openseer presets``: the built-in presets, one line each (`openseer.config.list_presets`)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents
from openseer.config import list_presets
from openseer.methods.registry import load_methods


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    sub.add_parser("presets", help="list the built-in presets, methods and backbone families").set_defaults(run=run)


BACKBONES = (
    "any timm model name (model.backbone): regnety_*/regnetx_* (SEER sizes regnety_320/640/1280/2560),",
    "resnet*, vit_* (set model.patch_size / model.img_size for small images); model.regnet.* builds a RegNet",
    "from its design-space parameters (seer-10b)",
)


def run(args: argparse.Namespace) -> int:
    print("presets:")
    for name, text in list_presets().items():
        print(f"  {name:<24} {text}")
    print("methods (method=NAME, or the preset's):")
    for name, entry in load_methods().items():
        print(f"  {name:<24} {entry.summary}")
    print("backbones:")
    for line in BACKBONES:
        print(f"  {line}")
    return 0
