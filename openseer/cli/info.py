"""``openseer info PRESET [--world-size N --precision bf16 --checkpointing --fsdp] [key=value ...]``: parameters,
FLOPs per image and memory per process of a preset, without allocating weights (`openseer.info`)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, config_overrides
from openseer.errors import ConfigError
from openseer.info import info_main

FLAG_KEYS = {
    "batch_size": "train.batch_size",
    "precision": "train.precision",
    "checkpointing": "parallel.activation_checkpointing",
    "fsdp": ("parallel.strategy", lambda on: "fsdp" if on else "ddp"),
}


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser(
        "info", help="parameters, FLOPs per image and memory per process of a preset (no weights allocated)"
    )
    p.add_argument("preset", help="preset name or YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--world-size", type=int, default=1, help="number of processes (GPUs) [1]")
    p.add_argument("--batch-size", type=int, help="override train.batch_size (images per process)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="override train.precision")
    p.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override parallel.activation_checkpointing",
    )
    p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=None, help="parallel.strategy fsdp / ddp")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.world_size < 1:
        raise ConfigError(f"--world-size {args.world_size} must be >= 1")
    print(info_main(args.preset, list(args.overrides) + config_overrides(args, FLAG_KEYS), args.world_size))
    return 0
