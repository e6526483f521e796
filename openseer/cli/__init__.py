"""The ``openseer`` command: one module per subcommand, each with ``add_parser(subparsers, parents)`` and
``run(args)``; every one calls the same functions as the Python API.

    openseer pretrain [PRESET_OR_YAML] --data PATH --out RUN_DIR [--epochs E] [--max-steps N] [key=value ...]
    openseer eval knn --checkpoint CKPT_OR_RUN_DIR --train PATH --test PATH [--k 10,20,200] --out FILE.json
    openseer embed --checkpoint CKPT --data PATH --out FEATURES.pt [--layer pooled]
    openseer eval linear|lowshot|finetune|all ...   (docs/evaluation.md)
    openseer report RUN_DIR
    openseer demo [--out DIR]
    openseer presets
    openseer info PRESET [--world-size N --precision bf16 --checkpointing --fsdp] [key=value ...]
    openseer shard --data IMAGES --out DIR [--max-size 1GB --max-count N --resize-longer 512]
    openseer launch [--nproc-per-node N | --slurm --nodes N --gpus-per-node G [--submit]] pretrain ...
    openseer curate --data POOL --model SOURCE --out DIR [--eval-sets A,B] [--target N]   (docs/curation.md)

Shared flags (``--checkpoint``, ``--train/--test``, evaluation settings, the ``--monitor-*`` group) are parent
parsers in `openseer.cli.common`. User errors (bad config, missing data, unusable checkpoint: every
`openseer.errors.OpenseerError`) print one ``openseer: error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from openseer.cli import compare, curate, demo, embed, export, info, launch, presets, pretrain, report, shard
from openseer.cli import eval as eval_commands  # (not to shadow the builtin)
from openseer.cli.common import Parents
from openseer.errors import OpenseerError

#: The subcommands, in the order ``openseer --help`` lists them.
COMMANDS = (pretrain, eval_commands, demo, presets, launch, info, embed, report, shard, export, compare, curate)


def build_parser() -> argparse.ArgumentParser:
    """The ``openseer`` parser; each parsed command line carries its command's ``run`` function."""
    parser = argparse.ArgumentParser(
        prog="openseer",
        description="Self-supervised pretraining of vision backbones "
        "(SwAV + RegNet, the SEER recipe) on your own unlabeled images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    parents = Parents()
    for command in COMMANDS:
        command.add_parser(sub, parents)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``openseer`` command line; returns the exit code (2: a user error, reported in one line)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    # pretrain takes key=value overrides anywhere on its line, also after --data/--out
    args, extra = parser.parse_known_args(argv)
    trailing = getattr(args, "trailing_overrides", False)
    unknown = [a for a in extra if not trailing or "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if trailing:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.run(args)
    except OpenseerError as e:
        print(f"openseer: error: {e}", file=sys.stderr)
        return 2
