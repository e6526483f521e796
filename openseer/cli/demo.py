"""``openseer demo [--out DIR]``: pretrain a tiny model on embedded real images and show that it learnt
(`openseer.demo.run_demo`)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents
from openseer.demo import run_demo


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser("demo", help="pretrain a tiny model on embedded real images and show that it learnt")
    p.add_argument("--out", default="demo_out", help="output directory [demo_out]")
    p.add_argument("--max-steps", type=int, default=0, help="shorten the demo (0: the preset's length)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    run_demo(args.out, max_steps=args.max_steps)
    return 0
