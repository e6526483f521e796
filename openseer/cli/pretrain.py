"""``openseer pretrain [PRESET_OR_YAML] --data PATH --out RUN_DIR [--epochs E | --minutes M] [--max-steps N]
[key=value ...]``:
pretrain a backbone on unlabeled images (`openseer.train.pretrain`); re-using ``--out`` resumes the run."""

from __future__ import annotations

import argparse
from pathlib import Path

from openseer import dist
from openseer.cli.common import MONITOR_KEYS, Parents, config_overrides
from openseer.config import field_help, load_config
from openseer.errors import ConfigError
from openseer.train import pretrain
from openseer.train.budget import check_minutes

#: Flags that set a config key (the monitor group's too).
FLAG_KEYS = {
    "init": "model.init",
    "init_strict": "model.init_strict",
    "data": "data.path",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "minutes": "train.minutes",
    "strategy": "parallel.strategy",
    **MONITOR_KEYS,
}


def _config_epilog() -> str:
    rows = field_help()
    width = max(len(k) for k, _, _ in rows)
    lines = ["config fields (override with key=value; defaults shown, presets change some):"]
    for key, default, text in rows:
        lines.append(f"  {key:<{width}}  {text} [default: {default}]")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone on a folder of unlabeled images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_config_epilog(),
        parents=[parents.monitor],
    )
    p.add_argument(
        "preset",
        nargs="?",
        default=None,
        help="preset name (see `openseer presets`) or a YAML file; default: the built-in defaults",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.batch_size=128")
    p.add_argument(
        "--data",
        required=True,
        help="folder of images (recursive), a tar, a file list (.txt), or tar shards to stream "
        "('shards/*.tar', 'shards/train-{000000..000127}.tar', s3://..., a folder from `openseer shard`)",
    )
    p.add_argument("--out", required=True, help="run directory (re-using it resumes the run)")
    p.add_argument("--init", metavar="SOURCE", help="start from pretrained weights (model.init; docs/weights.md)")
    p.add_argument(
        "--init-strict",
        type=lambda s: {"true": True, "false": False}[s.lower()],
        metavar="true|false",
        help="model.init_strict: refuse weights that do not fit exactly [true]",
    )
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--max-steps", type=int, help="override train.max_steps (stop after N steps)")
    p.add_argument(
        "--minutes",
        type=float,
        metavar="M",
        help="train.minutes: a wall-clock budget; a 50-step throughput probe turns it into the steps every "
        "schedule spans (instead of --epochs)",
    )
    p.add_argument("--strategy", choices=["ddp", "fsdp"], help="override parallel.strategy (used under torchrun)")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="refuse to start if RUN_DIR already holds a checkpoint (default: resume from it)",
    )
    # key=value overrides may also come after --data/--out: `openseer.cli.main` appends them to `overrides`
    p.set_defaults(run=run, trailing_overrides=True)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    preset = args.preset
    if preset and "=" in preset:  # no preset given, the first positional is an override
        overrides.insert(0, preset)
        preset = None
    if args.minutes is not None:  # 0 means "no budget" in a config, but a flag asking for 0 minutes is a slip
        check_minutes(args.minutes)
    cfg = load_config(preset, overrides + config_overrides(args, FLAG_KEYS))
    ckpts = Path(args.out) / "checkpoints"
    if args.no_resume and ((ckpts / "last.pt").exists() or (ckpts / "LATEST").exists()):
        raise ConfigError(f"{args.out} already holds a checkpoint and --no-resume was given; choose another --out")
    summary = pretrain(cfg, args.out, resume=not args.no_resume)
    if dist.is_main():  # under torchrun, one line for the whole run
        final, trivial = summary["final_loss_mean"], summary["uniform_loss"]  # None: resumed at the end / none
        print(
            f"{summary['status']}: {summary['steps']} steps, final loss "
            f"{'n/a' if final is None else format(final, '.4f')}"
            f"{'' if trivial is None else f' (trivial: {trivial:.4f})'}, "
            f"{summary['skipped_images']} images skipped; run dir {args.out}"
        )
        if "budget" in summary:
            b = summary["budget"]
            print(f"budget: {b['minutes']:g} minutes planned ({b['steps']} steps), {b['used_minutes']:.1f} used")
    return 0 if summary["status"] == "completed" else 3
