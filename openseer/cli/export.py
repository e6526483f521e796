"""``openseer export RUN_DIR --format timm|torchvision|onnx|torchscript|safetensors|detectron2 --out PATH``: write
a run's backbone (or that of any SOURCE: a timm tag, a VISSL/SwAV/DINO/torchvision file) for use elsewhere
(docs/weights.md)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents
from openseer.weights.export import FORMATS, export_run


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser(
        "export", help="write a backbone as timm, torchvision, ONNX, TorchScript, safetensors or detectron2 weights"
    )
    p.add_argument("source", metavar="RUN_DIR", help="an openseer run dir, or any SOURCE (timm:TAG, vissl:FILE ...)")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("--out", required=True, help="output file (a folder for --format timm)")
    p.add_argument(
        "--image-size", type=int, default=0, help="side of the example input traced for onnx/torchscript [the run's]"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = export_run(args.source, args.format, args.out, image_size=args.image_size)
    print(f"wrote the {args.format} export of {args.source} to {out}")
    return 0
