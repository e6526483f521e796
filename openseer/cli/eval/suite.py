"""``openseer eval all ...``: kNN, linear, low-shot (and fine-tuning) of a backbone and of its random-init
floor, in one table (`openseer.eval.suite.run_suite`)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, eval_settings, floats, ints
from openseer.eval.suite import run_suite


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser(
        "all",
        help="kNN, linear, low-shot (and fine-tune) of a backbone and of its random-init floor, one table",
        parents=[parents.checkpoint, parents.pair, parents.settings],
    )
    p.add_argument("--out-dir", help="folder for the JSONs, summary.md and summary.json [RUN_DIR/eval]")
    p.add_argument("--k", default="10,20,200", help="kNN k values [10,20,200]")
    p.add_argument("--fractions", default="0.01,0.1", help="low-shot label fractions [0.01,0.1]")
    p.add_argument("--seeds", type=int, default=3, help="seeded subsets per fraction [3]")
    p.add_argument(
        "--finetune",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="also fine-tune on this label fraction, e.g. 0.1 [0: skip, the slow one]",
    )
    p.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs [10]")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-init floor")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    summary = run_suite(
        args.checkpoint,
        args.train,
        args.test,
        out_dir=args.out_dir,
        ks=ints(args.k, "--k"),
        fractions=floats(args.fractions, "--fractions"),
        seeds=args.seeds,
        baseline=not args.no_baseline,
        finetune_fraction=args.finetune,
        finetune_epochs=args.finetune_epochs,
        settings=eval_settings(args),
    )
    print(summary["table"])
    print(f"results in {summary['out_dir']} (summary.md, summary.json, one JSON per evaluation)")
    return 0
