"""The ``openseer`` command. Thin: every subcommand calls the same functions as the Python API.

    openseer pretrain [PRESET_OR_YAML] --data PATH --out RUN_DIR [--epochs E] [--max-steps N] [key=value ...]
    openseer eval knn --checkpoint CKPT_OR_RUN_DIR --train PATH --test PATH [--k 10,20,200] --out FILE.json
    openseer demo [--out DIR]
    openseer presets

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
    pt.add_argument("--data", required=True, help="folder of images (recursive) or a tar of images")
    pt.add_argument("--out", required=True, help="run directory (re-using it resumes the run)")
    pt.add_argument("--epochs", type=int, help="override train.epochs")
    pt.add_argument("--max-steps", type=int, help="override train.max_steps (stop after N steps)")
    pt.add_argument(
        "--no-resume",
        action="store_true",
        help="refuse to start if RUN_DIR already holds a checkpoint (default: resume from it)",
    )

    ev = sub.add_parser("eval", help="evaluate a pretrained backbone")
    evs = ev.add_subparsers(dest="eval_command", required=True)
    knn = evs.add_parser("knn", help="weighted kNN on frozen features (DINO protocol: cosine, T=0.07)")
    knn.add_argument("--checkpoint", required=True, help="run dir, backbone.safetensors or a .pt checkpoint")
    knn.add_argument("--train", required=True, help="labelled train images: <class>/<image> folder or a tar")
    knn.add_argument("--test", required=True, help="labelled test images: <class>/<image> folder or a tar")
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
    cfg = load_config(preset, overrides)
    if args.no_resume and (Path(args.out) / "checkpoints" / "last.pt").exists():
        raise ConfigError(
            f"{args.out} already holds a checkpoint and --no-resume was given; choose another --out"
        )
    summary = pretrain(cfg, args.out, resume=not args.no_resume)
    print(
        f"{summary['status']}: {summary['steps']} steps, final loss {summary['final_loss_mean']:.4f} "
        f"(uniform: {summary['uniform_loss']:.4f}), {summary['skipped_images']} images skipped; "
        f"run dir {args.out}"
    )
    return 0 if summary["status"] == "completed" else 3


def _eval_knn(args: argparse.Namespace) -> int:
    from openseer.eval import format_table
    from openseer.eval.run import knn_from_checkpoint

    try:
        ks = tuple(int(k) for k in args.k.split(",") if k.strip())
    except ValueError:
        raise ConfigError(f"--k {args.k!r} must be comma-separated integers, e.g. 10,20,200") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--k {args.k!r} must hold positive integers")
    result = knn_from_checkpoint(
        args.checkpoint,
        args.train,
        args.test,
        ks=ks,
        temperature=args.temperature,
        image_size=args.image_size,
        crop_pct=args.crop_pct,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
    )
    print(format_table({int(k): v for k, v in result["top1"].items()}, f"kNN top-1 ({args.checkpoint})"))
    if result.get("num_failed"):
        print(f"{result['num_failed']} unreadable images were left out")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    from openseer.checkpoint import CheckpointError
    from openseer.data import DataError
    from openseer.train import TrainingError

    try:
        if args.command == "pretrain":
            return _pretrain(args)
        if args.command == "eval":
            return _eval_knn(args)
        if args.command == "demo":
            from openseer.demo import run_demo

            run_demo(args.out, max_steps=args.max_steps)
            return 0
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
