"""``openseer eval all ...``: every registered evaluation with a suite role (kNN, linear, low-shot and
fine-tuning when asked) of a backbone and of its random-init floor, in one table
(`openseer.eval.suite.run_suite`)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, eval_settings
from openseer.eval.registry import add_suite_arguments, suite_params_from_args
from openseer.eval.suite import run_suite


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser(
        "all",
        help="kNN, linear, low-shot (and fine-tune) of a backbone and of its random-init floor, one table",
        parents=[parents.checkpoint, parents.pair, parents.settings],
    )
    p.add_argument("--out-dir", help="folder for the JSONs, summary.md and summary.json [RUN_DIR/eval]")
    add_suite_arguments(p)
    p.add_argument("--no-baseline", action="store_true", help="skip the random-init floor")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    params = suite_params_from_args(args)
    options = dict(out_dir=args.out_dir, baseline=not args.no_baseline, settings=eval_settings(args), **params)
    summary = run_suite(args.checkpoint, args.train, args.test, **options)
    print(summary["table"])
    print(f"results in {summary['out_dir']} (summary.md, summary.json, one JSON per evaluation)")
    return 0
