"""``openseer eval linear ...``: a grid of linear probes on frozen features, chosen on a validation split
carved from train (`openseer.eval.linear.linear_probe`)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, floats, write_json
from openseer.cli.eval.frozen import add_frozen_parser, load_pair
from openseer.eval.linear import linear_probe


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = add_frozen_parser(sub, parents, "linear", "grid of linear probes on frozen features (val split from train)")
    p.add_argument("--lrs", default="0.01,0.03,0.1,0.3,1.0", help="learning rates of the grid")
    p.add_argument("--wds", default="0,1e-4,1e-3", help="weight decays of the grid")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out to choose")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    lrs, wds = floats(args.lrs, "--lrs"), floats(args.wds, "--wds")
    train, test, meta = load_pair(args)
    result = linear_probe(
        train.features,
        train.labels,
        test.features,
        test.labels,
        len(train.classes),
        lrs,
        wds,
        epochs=args.epochs,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )
    print(
        f"linear probe: test top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}% "
        f"(lr {result['best']['lr']}, wd {result['best']['wd']}, chosen on {result['num_val']} val)"
    )
    write_json({**result, **meta}, args.out)
    return 0
