"""``openseer eval NAME|all``: evaluate a pretrained backbone (docs/evaluation.md).

One subcommand per registered evaluation (`openseer.eval.registry`: built in ``knn``, ``linear``, ``lowshot``,
``finetune``), built from its entry: its help, its flags, its options and the text it prints, plus ``all``
(`openseer.cli.eval.suite`). Frozen evaluations take either a checkpoint with labelled ``--train``/``--test``
data (features come from the cache, or are extracted once and cached) or two features files written by
``openseer embed`` (`openseer.cli.eval.frozen`). Every command prints a short summary and writes its full
result as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
from functools import partial

from openseer.cli.common import Parents, add_leakage_check, eval_settings, write_json
from openseer.cli.eval import suite
from openseer.cli.eval.frozen import add_frozen_parser, frozen_inputs
from openseer.eval.pipeline import run_evaluation
from openseer.eval.registry import Evaluation, load_evaluations


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser("eval", help="evaluate a pretrained backbone")
    evs = p.add_subparsers(dest="eval_command", required=True)
    for entry in load_evaluations().values():
        _add_evaluation(evs, parents, entry)
    suite.add_parser(evs, parents)
    for parser in evs.choices.values():  # --check-leakage RUN_OR_LIST on every evaluation
        add_leakage_check(parser)


def _add_evaluation(sub: argparse._SubParsersAction, parents: Parents, entry: Evaluation) -> None:
    """``openseer eval NAME``: the shared flags of its kind of input, then its own."""
    if entry.frozen:
        p = add_frozen_parser(sub, parents, entry.name, entry.help)
    else:  # its own --batch-size, if any, is a training batch: the extraction batch comes from the run
        shared = [parents.checkpoint, parents.pair, parents.settings_no_batch, parents.out]
        p = sub.add_parser(entry.name, help=entry.help, parents=shared)
    entry.add_arguments(p)
    p.set_defaults(run=partial(_run, entry))


def _run(entry: Evaluation, args: argparse.Namespace) -> int:
    options = entry.from_args(args)  # before any slow work: a bad flag fails at once
    if entry.frozen:
        inputs = frozen_inputs(args)
    else:
        inputs = {"checkpoint": args.checkpoint, "train": args.train, "test": args.test}
    result = run_evaluation(entry, settings=eval_settings(args), **inputs, **options)
    print(entry.describe(result))
    write_json(result, args.out)
    return 0
