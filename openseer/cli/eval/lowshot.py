"""``openseer eval lowshot ...``: linear probe and kNN on class-balanced label fractions over seeds
(SEER's 1% / 10% protocol; `openseer.eval.lowshot.run_lowshot`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from openseer.cli.common import Parents, floats, ints, write_json
from openseer.cli.eval.frozen import add_frozen_parser, load_pair
from openseer.eval.lowshot import run_lowshot


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = add_frozen_parser(sub, parents, "lowshot", "linear + kNN on class-balanced label fractions over seeds")
    p.add_argument("--fractions", default="0.01,0.1", help="label fractions per class [0.01,0.1]")
    p.add_argument("--seeds", type=int, default=3, help="number of seeded subsets per fraction [3]")
    p.add_argument("--k", default="10,20", help="kNN k values [10,20]")
    p.add_argument("--lrs", default="0.01,0.03,0.1,0.3,1.0", help="learning rates of the linear-probe grid")
    p.add_argument("--wds", default="0,1e-4,1e-3", help="weight decays of the linear-probe grid")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--subsets-out", help="JSON of the chosen subsets [beside --out, else not written]")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    ks, fractions = ints(args.k, "--k"), floats(args.fractions, "--fractions")  # before any slow work
    lrs, wds = floats(args.lrs, "--lrs"), floats(args.wds, "--wds")
    train, test, meta = load_pair(args)
    subsets_out = args.subsets_out or (str(Path(args.out).with_suffix(".subsets.json")) if args.out else None)
    result = run_lowshot(
        train, test, fractions, args.seeds, ks=ks, lrs=lrs, wds=wds, epochs=args.epochs, subsets_out=subsets_out
    )
    for fraction, r in result["results"].items():
        knn = ", ".join(f"k={k} {100 * v['mean']:.2f}±{100 * v['std']:.2f}" for k, v in r["knn_top1"].items())
        lin = r["linear_top1"]
        print(f"{float(fraction):.0%} labels: linear {100 * lin['mean']:.2f}±{100 * lin['std']:.2f}; kNN {knn}")
    write_json({**result, **meta}, args.out)
    return 0
