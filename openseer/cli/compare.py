"""``openseer compare --methods swav,barlowtwins,... --data UNLABELLED --train LABELLED --test LABELLED
--steps N|--epochs N|--minutes M --out DIR [key=value ...]``: which method for my data? Each method pretrained
with its short preset on the same images and budget (resumable), `eval all` on each and the random-init floor,
one table (`openseer.compare.compare`; docs/methods.md)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, eval_settings, flags
from openseer.compare import compare
from openseer.eval.registry import add_suite_arguments, suite_params_from_args


def preset_suffix(value: str) -> str:
    """``cifar10-regnet`` or ``-cifar10-regnet`` -> ``-cifar10-regnet`` (argparse reads a value that starts with a
    dash as an option, so the dash may be left out)."""
    return value if value.startswith("-") else "-" + value


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser(
        "compare",
        help="pretrain several methods on the same data and budget, evaluate each, one table",
        parents=[parents.pair, parents.settings],
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every method")
    p.add_argument("--methods", required=True, help="comma-separated methods, e.g. swav,barlowtwins,vicreg")
    p.add_argument("--data", required=True, help="unlabelled pretraining images (as pretrain --data)")
    p.add_argument("--out", required=True, help="folder: one run dir per method, compare.md/.json/.html")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="optimizer steps per method")
    budget.add_argument("--epochs", type=int, help="epochs per method")
    budget.add_argument(
        "--minutes",
        type=float,
        help="pretraining wall time per method: each gets the steps a short throughput probe says fit",
    )
    p.add_argument(
        "--preset-suffix",
        type=preset_suffix,
        default="-cifar10",
        help="short presets <method>-<suffix>, e.g. cifar10-regnet (a leading '-' is optional) [cifar10]",
    )
    add_suite_arguments(p)  # the `eval all` options (--k, --fractions, --seeds, --finetune, ...)
    p.set_defaults(run=run, trailing_overrides=True)


def run(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    budget = flags(args, "steps", "epochs", "minutes", "preset_suffix", "overrides")
    eval_options = {**suite_params_from_args(args), "settings": eval_settings(args)}
    summary = compare(methods, args.data, args.train, args.test, args.out, eval_options=eval_options, **budget)
    print(summary["table"])
    print(f"results in {args.out} (compare.md, compare.json, compare.html)")
    return 0
