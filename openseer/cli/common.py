"""What the ``openseer`` commands share: parent parsers for the flag families, flags -> config overrides,
list-valued flags, JSON output.

A command module builds its parser from these parents (argparse ``parents=[...]``, as dinov2's
``eval/setup.py`` does), so ``--checkpoint``, ``--train/--test``, ``--image-size --crop-pct --batch-size
--num-workers --device`` and the ``--monitor-*`` group are declared once, with one help text each.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openseer.curate.leakage import warn_shared_images
from openseer.eval.settings import EvalSettings
from openseer.io import atomic_write_json

CHECKPOINT_HELP = (
    "run dir, backbone.safetensors, .pt checkpoint or any SOURCE (timm:TAG, vissl:/swav:/dino:/torchvision:FILE; "
    "docs/weights.md)"
)
LABELLED_HELP = "labelled {} images: <class>/<image> folder or tar, file list, shards"


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


class Parents:
    """The shared parent parsers, built once per ``openseer`` parser and handed to every command module.

    Attributes:
        checkpoint / checkpoint_optional: ``--checkpoint`` (required / optional).
        pair / pair_optional: labelled ``--train`` and ``--test`` (required / optional).
        settings: ``--image-size --crop-pct --batch-size --num-workers --device`` (`EvalSettings`).
        settings_no_batch: the same without ``--batch-size``, for commands whose batch size means another thing.
        layer: ``--layer``; features: ``--train-features --test-features --cache-dir``; out: ``--out FILE.json``.
        monitor: pretrain's ``--monitor-*`` group (config section ``monitor``).
    """

    def __init__(self) -> None:
        self.checkpoint = _checkpoint(required=True)
        self.checkpoint_optional = _checkpoint(required=False)
        self.pair = _pair(required=True)
        self.pair_optional = _pair(required=False)
        self.settings = _settings(batch_size=True)
        self.settings_no_batch = _settings(batch_size=False)
        self.layer = _parent()
        self.layer.add_argument("--layer", default="pooled", help="'pooled' (default) or a stage name/index, e.g. s3")
        self.features = _parent()
        self.features.add_argument("--train-features", help="features file from `openseer embed` (instead of --train)")
        self.features.add_argument("--test-features", help="features file from `openseer embed` (instead of --test)")
        self.features.add_argument(
            "--cache-dir", help="feature cache folder [RUN_DIR/features or beside the checkpoint]"
        )
        self.out = _parent()
        self.out.add_argument("--out", help="write the results as JSON here")
        self.monitor = _monitor()


def _checkpoint(required: bool) -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--checkpoint", required=required, help=CHECKPOINT_HELP)
    return p


def _pair(required: bool) -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--train", required=required, help=LABELLED_HELP.format("train"))
    p.add_argument("--test", required=required, help=LABELLED_HELP.format("test"))
    return p


def _settings(batch_size: bool) -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--image-size", type=int, default=0, help="evaluation image side [0: the run's eval size]")
    p.add_argument("--crop-pct", type=float, default=0.0, help="resize-to-crop ratio [0: the run's eval.crop_pct]")
    if batch_size:
        p.add_argument(
            "--batch-size", type=int, default=0, help="images per forward pass [0: the run's eval.batch_size, 256]"
        )
    p.add_argument("--num-workers", type=int, default=-1, help="DataLoader workers [-1: from the cores]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto]")
    return p


def _monitor() -> argparse.ArgumentParser:
    p = _parent()
    g = p.add_argument_group("online kNN monitor")
    g.add_argument("--monitor-train", help="labelled images used as the kNN bank while training [monitor.train]")
    g.add_argument("--monitor-test", help="labelled images classified by the monitor [monitor.test]")
    g.add_argument("--monitor-every", type=int, help="steps between monitor runs [monitor.every: 100]")
    g.add_argument("--monitor-max-train", type=int, help="class-balanced cap [monitor.max_train: 5000]")
    g.add_argument("--monitor-max-test", type=int, help="class-balanced cap [monitor.max_test: 1000]")
    return p


#: The ``--monitor-*`` flags as config keys (for `config_overrides`).
MONITOR_KEYS = {f"monitor_{k}": f"monitor.{k}" for k in ("train", "test", "every", "max_train", "max_test")}


def eval_settings(args: argparse.Namespace) -> EvalSettings:
    """The settings flags as `EvalSettings`; a command built on ``settings_no_batch`` leaves the extraction
    batch size to the run."""
    return EvalSettings(
        image_size=args.image_size,
        crop_pct=args.crop_pct,
        batch_size=getattr(args, "batch_size", 0),
        num_workers=args.num_workers,
        device=args.device,
    )


def config_overrides(args: argparse.Namespace, keys: dict[str, str | tuple[str, Callable[[Any], Any]]]) -> list[str]:
    """The one place where flags become ``section.key=value`` overrides.

    Args:
        args: the parsed command line.
        keys: flag destination -> config key, or (config key, value converter); flags left at None are skipped.
    """
    out = []
    for dest, target in keys.items():
        value = getattr(args, dest)
        if value is None:
            continue
        key, convert = target if isinstance(target, tuple) else (target, None)
        out.append(f"{key}={json.dumps(convert(value) if convert else value)}")
    return out


def flags(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """``{name: args.name}`` for the flags a command hands on unchanged, as keyword arguments."""
    return {name: getattr(args, name) for name in names}


def add_leakage_check(parser: argparse.ArgumentParser) -> None:
    """Give an evaluation command ``--check-leakage RUN_OR_LIST``: before it runs, warn when its ``--train`` /
    ``--test`` images are byte-identical to images of that pretraining pool (`openseer.curate.leakage`)."""
    parser.add_argument(
        "--check-leakage",
        metavar="RUN_OR_LIST",
        help="pretraining run dir or pool (folder, file list): warn if the evaluation images are in it",
    )
    command = parser.get_default("run")

    def run(args: argparse.Namespace) -> int:
        sets = [p for p in (getattr(args, "train", None), getattr(args, "test", None)) if p]
        if args.check_leakage and sets:
            warn_shared_images(args.check_leakage, sets)
        return command(args)

    parser.set_defaults(run=run)


def write_json(result: dict[str, Any], out: str | Path | None) -> None:
    """Write ``result`` to ``out`` atomically (nothing when ``out`` is None)."""
    if out:
        atomic_write_json(out, result)
