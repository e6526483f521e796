"""``openseer eval knn|linear|lowshot|finetune|all``: evaluate a pretrained backbone (docs/evaluation.md).

One module per subcommand. Frozen evaluations (knn, linear, lowshot) take either a checkpoint with labelled
``--train``/``--test`` data (features come from the cache, or are extracted once and cached) or two features
files written by ``openseer embed`` (`openseer.cli.eval.frozen`). Every command prints a short table and writes
its full result as JSON with ``--out``.
"""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, add_leakage_check
from openseer.cli.eval import finetune, knn, linear, lowshot, suite

SUBCOMMANDS = (knn, linear, lowshot, finetune, suite)


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser("eval", help="evaluate a pretrained backbone")
    evs = p.add_subparsers(dest="eval_command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(evs, parents)
    for parser in evs.choices.values():  # --check-leakage RUN_OR_LIST on every evaluation
        add_leakage_check(parser)
