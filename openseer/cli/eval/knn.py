"""``openseer eval knn --checkpoint CKPT_OR_RUN_DIR --train PATH --test PATH [--k 10,20,200] --out FILE.json``:
weighted kNN on frozen features (Wu et al. 2018, DINO protocol: cosine, T=0.07; `openseer.eval.knn`)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, ints, write_json
from openseer.cli.eval.frozen import add_frozen_parser, load_pair
from openseer.eval.knn import format_table, knn_result


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = add_frozen_parser(sub, parents, "knn", "weighted kNN on frozen features (DINO protocol: cosine, T=0.07)")
    p.add_argument("--k", default="10,20,200", help="comma-separated k values [10,20,200]")
    p.add_argument("--temperature", type=float, default=0.07, help="vote temperature T [0.07]")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    ks = ints(args.k, "--k")  # before any slow work
    train, test, meta = load_pair(args)
    result = {**knn_result(train, test, ks, args.temperature), **meta}
    print(format_table({int(k): v for k, v in result["top1"].items()}, f"kNN top-1 ({meta['checkpoint']})"))
    write_json(result, args.out)
    return 0
