"""``openseer curate --data POOL --model SOURCE --out DIR [--eval-sets A,B] [--target N]``: remove exact and near
duplicates and evaluation-set copies from an image pool and sample a balanced subset (docs/curation.md).

Writes ``DIR/curated.txt`` (``openseer pretrain --data DIR/curated.txt`` reads it as it is), ``DIR/summary.json``
and ``DIR/report.html``; the pool itself is only read. Under ``torchrun`` every process embeds a share.
"""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, eval_settings
from openseer.curate import CurateOptions, curate
from openseer.dist import init_distributed
from openseer.eval.registry import ints

_DEFAULTS = CurateOptions()


def _help(name: str) -> str:
    field = CurateOptions.__dataclass_fields__[name]
    default = getattr(_DEFAULTS, name)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{field.metadata['help']} [{shown if shown != '' else 'auto'}]"


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser(
        "curate",
        help="deduplicate a pool, remove evaluation-set copies, sample a balanced subset",
        parents=[parents.settings],
    )
    p.add_argument("--data", required=True, help="the pool: folder, file list, tar or shards (as pretrain --data)")
    p.add_argument("--model", required=True, help="backbone SOURCE: run dir, backbone.safetensors, timm:NAME, ...")
    p.add_argument("--out", required=True, help="output folder (curated.txt, summary.json, report.html)")
    p.add_argument("--eval-sets", default="", help="comma-separated evaluation sets kept out of the pool")
    p.add_argument("--target", type=int, default=0, help=_help("target"))
    p.add_argument("--dedup-threshold", type=float, default=_DEFAULTS.dedup_threshold, help=_help("dedup_threshold"))
    p.add_argument(
        "--leakage-threshold", type=float, default=_DEFAULTS.leakage_threshold, help=_help("leakage_threshold")
    )
    p.add_argument("--neighbours", type=int, default=_DEFAULTS.neighbours, help=_help("neighbours"))
    p.add_argument("--index", default=_DEFAULTS.index, help=_help("index"))
    p.add_argument("--levels", default="", help=_help("levels"))
    p.add_argument("--resample-steps", type=int, default=_DEFAULTS.resample_steps, help=_help("resample_steps"))
    p.add_argument("--sample-sizes", default="", help=_help("sample_sizes"))
    p.add_argument("--strategy", default=_DEFAULTS.strategy, help=_help("strategy"))
    p.add_argument("--dtype", default=_DEFAULTS.dtype, help=_help("dtype"))
    p.add_argument("--layer", default=_DEFAULTS.layer, help=_help("layer"))
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help=_help("seed"))
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = CurateOptions(
        target=args.target,
        dedup_threshold=args.dedup_threshold,
        leakage_threshold=args.leakage_threshold,
        neighbours=args.neighbours,
        index=args.index,
        levels=ints(args.levels, "--levels") if args.levels else (),
        resample_steps=args.resample_steps,
        sample_sizes=ints(args.sample_sizes, "--sample-sizes") if args.sample_sizes else (),
        strategy=args.strategy,
        dtype=args.dtype,
        layer=args.layer,
        seed=args.seed,
        progress=not args.no_progress,
    ).validate()  # before any slow work
    init_distributed(args.device)
    eval_sets = [e.strip() for e in args.eval_sets.split(",") if e.strip()]
    summary = curate(args.data, args.model, args.out, eval_sets, eval_settings(args), options)
    if summary:  # rank 0
        counts = summary["counts"]
        print(" -> ".join(f"{k} {v}" for k, v in counts.items() if k in _SHOWN))
        print(f"wrote {summary['outputs']['list']}, {summary['outputs']['summary']}, {summary['outputs']['report']}")
    return 0


_SHOWN = ("decoded", "after_exact_dedup", "after_near_dedup", "after_leakage", "curated")
