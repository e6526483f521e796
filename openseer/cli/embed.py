"""``openseer embed --checkpoint CKPT --data PATH --out FEATURES.pt [--layer pooled]``: extract (and cache)
frozen features of labelled images, for ``openseer eval knn|linear|lowshot --train-features ...``."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, eval_settings
from openseer.eval.cache import cached_features


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser(
        "embed",
        help="extract (and cache) frozen features of labelled images",
        parents=[parents.checkpoint, parents.layer, parents.settings],
    )
    p.add_argument("--data", required=True, help="labelled images: <class>/<image> folder or a tar")
    p.add_argument("--out", required=True, help="features file (.pt); reused when its inputs are unchanged")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    feats, meta = cached_features(args.checkpoint, args.data, eval_settings(args), out=args.out, layer=args.layer)
    state = "reused cached" if meta["cached"] else "extracted"
    print(f"{state} {len(feats)} x {feats.dim} features ({len(feats.classes)} classes) -> {args.out}")
    return 0
