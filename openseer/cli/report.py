"""``openseer report RUN_DIR``: ``RUN_DIR/report/report.html`` and its PNGs: training curves, nearest
neighbours, prototypes and the run's evaluations (`openseer.report.write_report`)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, flags
from openseer.report import write_report


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser("report", help="report.html + PNGs of a run: curves, neighbours, prototypes, evals")
    p.add_argument("run_dir", help="an openseer run directory")
    p.add_argument("--data", help="images for the neighbour/prototype grids [the run's data.path]")
    p.add_argument("--max-images", type=int, default=2000, help="images embedded for the grids [2000]")
    p.add_argument("--queries", type=int, default=8, help="query images in the neighbour grid [8]")
    p.add_argument("--prototypes", type=int, default=8, help="prototypes shown [8]")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = write_report(args.run_dir, **flags(args, "data", "max_images", "queries", "prototypes", "seed"))
    print(f"wrote {path}")
    return 0
