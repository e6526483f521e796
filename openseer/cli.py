"""The ``openseer`` command. Thin: every subcommand calls the same functions as the Python API.

    openseer pretrain [PRESET_OR_YAML] --data PATH --out RUN_DIR [--epochs E] [--max-steps N] [key=value ...]
    openseer eval knn --checkpoint CKPT_OR_RUN_DIR --train PATH --test PATH [--k 10,20,200] --out FILE.json
    openseer embed --checkpoint CKPT --data PATH --out FEATURES.pt [--layer pooled]
    openseer eval linear|lowshot|finetune ...   (docs/evaluation.md)
    openseer report RUN_DIR
    openseer demo [--out DIR]
    openseer presets
    openseer info PRESET [--world-size N --precision bf16 --checkpointing --fsdp] [key=value ...]
    openseer shard --data IMAGES --out DIR [--max-size 1GB --max-count N --resize-longer 512]
    openseer launch [--nproc-per-node N | --slurm --nodes N --gpus-per-node G [--submit]] pretrain ...

User errors (bad config, missing data, unusable checkpoint) print one ``openseer: error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from openseer.config import ConfigError, field_help, list_presets, load_config


def _config_epilog() -> str:
    rows = field_help()
    width = max(len(k) for k, _, _ in rows)
    lines = ["config fields (override with key=value; defaults shown, presets change some):"]
    for key, default, text in rows:
        lines.append(f"  {key:<{width}}  {text} [default: {default}]")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openseer",
        description="Self-supervised pretraining of vision backbones "
        "(SwAV + RegNet, the SEER recipe) on your own unlabeled images.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser(
        "pretrain",
        help="pretrain a backbone on a folder of unlabeled images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_config_epilog(),
    )
    pt.add_argument(
        "preset",
        nargs="?",
        default=None,
        help="preset name (see `openseer presets`) or a YAML file; default: the built-in defaults",
    )
    pt.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.batch_size=128"
    )
    pt.add_argument(
        "--data",
        required=True,
        help="folder of images (recursive), a tar, a file list (.txt), or tar shards to stream "
        "('shards/*.tar', 'shards/train-{000000..000127}.tar', s3://..., a folder from `openseer shard`)",
    )
    pt.add_argument("--out", required=True, help="run directory (re-using it resumes the run)")
    pt.add_argument("--epochs", type=int, help="override train.epochs")
    pt.add_argument("--max-steps", type=int, help="override train.max_steps (stop after N steps)")
    pt.add_argument(
        "--strategy", choices=["ddp", "fsdp"], help="override parallel.strategy (used under torchrun)"
    )
    pt.add_argument(
        "--no-resume",
        action="store_true",
        help="refuse to start if RUN_DIR already holds a checkpoint (default: resume from it)",
    )

    ev = sub.add_parser("eval", help="evaluate a pretrained backbone")
    evs = ev.add_subparsers(dest="eval_command", required=True)
    knn = evs.add_parser("knn", help="weighted kNN on frozen features (DINO protocol: cosine, T=0.07)")
    knn.add_argument("--checkpoint", required=True, help="run dir, backbone.safetensors or a .pt checkpoint")
    knn.add_argument(
        "--train",
        required=True,
        help="labelled train images: <class>/<image> folder or tar, file list, shards",
    )
    knn.add_argument(
        "--test", required=True, help="labelled test images: <class>/<image> folder or tar, file list, shards"
    )
    knn.add_argument("--k", default="10,20,200", help="comma-separated k values [10,20,200]")
    knn.add_argument("--temperature", type=float, default=0.07)
    knn.add_argument("--out", help="write the results as JSON here")
    knn.add_argument(
        "--image-size", type=int, default=0, help="evaluation size (default: from the run's config)"
    )
    knn.add_argument(
        "--crop-pct", type=float, default=0.0, help="resize-to-crop ratio (default: from the run)"
    )
    knn.add_argument("--batch-size", type=int, default=256)
    knn.add_argument("--num-workers", type=int, default=-1)
    knn.add_argument("--device", default="auto")

    demo = sub.add_parser(
        "demo", help="pretrain a tiny model on embedded real images and show that it learnt"
    )
    demo.add_argument("--out", default="demo_out", help="output directory [demo_out]")
    demo.add_argument("--max-steps", type=int, default=0, help="shorten the demo (0: the preset's length)")

    sub.add_parser("presets", help="list the built-in presets")
    from openseer.launch import add_parser as add_launch_parser

    add_launch_parser(sub)
    info = sub.add_parser(
        "info", help="parameters, FLOPs per image and memory per process of a preset (no weights allocated)"
    )
    info.add_argument("preset", help="preset name or YAML file")
    info.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    info.add_argument("--world-size", type=int, default=1, help="number of processes (GPUs) [1]")
    info.add_argument("--batch-size", type=int, help="override train.batch_size (images per process)")
    info.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="override train.precision")
    info.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override parallel.activation_checkpointing",
    )
    info.add_argument(
        "--fsdp", action=argparse.BooleanOptionalAction, default=None, help="parallel.strategy fsdp / ddp"
    )
    from openseer.eval.commands import add_parsers as add_eval_parsers

    add_eval_parsers(sub, evs, knn, pt)  # embed, eval linear|lowshot|finetune, report, --monitor-*

    sh = sub.add_parser(
        "shard", help="pack images into tar shards (WebDataset format) with a manifest, for streaming"
    )
    sh.add_argument("--data", required=True, help="folder of images, a tar of images or a file list (.txt)")
    sh.add_argument("--out", required=True, help="empty output folder for the shards and manifest.json")
    sh.add_argument("--max-size", default="1GB", help="bytes per shard at most, e.g. 500MB, 1GB [1GB]")
    sh.add_argument("--max-count", type=int, default=100_000, help="images per shard at most [100000]")
    sh.add_argument(
        "--resize-longer", type=int, default=0, help="shrink images whose longer side exceeds this [0: keep]"
    )
    sh.add_argument("--quality", type=int, default=90, help="JPEG quality of shrunk images [90]")
    sh.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar [shard]")
    lab = sh.add_mutually_exclusive_group()
    lab.add_argument("--labels", dest="labelled", action="store_true", default=None, help="require labels")
    lab.add_argument("--no-labels", dest="labelled", action="store_false", help="store no labels")
    sh.add_argument("--no-verify", action="store_true", help="skip re-reading the shards after writing")
    return p


def _pretrain(args: argparse.Namespace) -> int:
    from openseer.train import pretrain

    overrides = list(args.overrides)
    preset = args.preset
    if preset and "=" in preset:  # no preset given, first positional is an override
        overrides.insert(0, preset)
        preset = None
    overrides.append(f"data.path={json.dumps(args.data)}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.strategy is not None:
        overrides.append(f"parallel.strategy={args.strategy}")
    from openseer.eval.commands import monitor_overrides

    cfg = load_config(preset, overrides + monitor_overrides(args))
    ckpts = Path(args.out) / "checkpoints"
    if args.no_resume and ((ckpts / "last.pt").exists() or (ckpts / "LATEST").exists()):
        raise ConfigError(
            f"{args.out} already holds a checkpoint and --no-resume was given; choose another --out"
        )
    summary = pretrain(cfg, args.out, resume=not args.no_resume)
    from openseer import dist

    if dist.is_main():  # under torchrun, one line for the whole run
        print(
            f"{summary['status']}: {summary['steps']} steps, final loss {summary['final_loss_mean']:.4f} "
            f"{_trivial_note(summary['uniform_loss'])}, {summary['skipped_images']} images skipped; "
            f"run dir {args.out}"
        )
    return 0 if summary["status"] == "completed" else 3


def _trivial_note(value: float | None) -> str:
    """The method's trivial loss for the closing line; BYOL and SimSiam have none (their collapse is a minimum)."""
    return f"(uniform: {value:.4f})" if value is not None else "(no trivial loss)"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = _parser()
    # key=value overrides may come anywhere on the pretrain line, also after --data/--out
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if args.command != "pretrain" or "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "pretrain":
        args.overrides = [*args.overrides, *extra]
    from openseer.checkpoint import CheckpointError
    from openseer.data import DataError
    from openseer.train import TrainingError

    try:
        if args.command == "pretrain":
            return _pretrain(args)
        if args.command == "eval" or args.command in ("embed", "report"):
            from openseer.eval.commands import run as run_eval_command

            return run_eval_command(args)
        if args.command == "demo":
            from openseer.demo import run_demo

            run_demo(args.out, max_steps=args.max_steps)
            return 0
        if args.command == "shard":
            from openseer.data.pack import write_shards

            m = write_shards(
                args.data,
                args.out,
                max_size=args.max_size,
                max_count=args.max_count,
                resize_longer=args.resize_longer,
                quality=args.quality,
                labelled=args.labelled,
                prefix=args.prefix,
                verify=not args.no_verify,
            )
            skipped = ", ".join(f"{n} {r}" for r, n in m["skipped"].items()) or "none"
            print(
                f"{m['total']} images in {len(m['shards'])} shards ({m['bytes'] / 1e6:.1f} MB, "
                f"{len(m['classes'])} classes) in {args.out}; skipped: {skipped}; pattern {m['pattern']}"
            )
            return 0
        if args.command == "info":
            from openseer.info import info_main

            overrides = list(args.overrides)
            for key, value in (
                ("train.batch_size", args.batch_size),
                ("train.precision", args.precision),
                ("parallel.activation_checkpointing", args.checkpointing),
                ("parallel.strategy", None if args.fsdp is None else ("fsdp" if args.fsdp else "ddp")),
            ):
                if value is not None:
                    overrides.append(f"{key}={json.dumps(value)}")
            if args.world_size < 1:
                raise ConfigError(f"--world-size {args.world_size} must be >= 1")
            print(info_main(args.preset, overrides, args.world_size))
            return 0
        if args.command == "launch":
            from openseer.launch import run as run_launch

            return run_launch(args)
        if args.command == "presets":
            for name, text in list_presets().items():
                print(f"{name:<24} {text}")
            return 0
    except (ConfigError, DataError, CheckpointError, TrainingError) as e:
        print(f"openseer: error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
