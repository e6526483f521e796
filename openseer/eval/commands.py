"""The evaluation subcommands of ``openseer`` (``embed``, ``eval knn|linear|lowshot|finetune|all``, ``report``)
and the ``--monitor-*`` options of ``pretrain``; `openseer.cli` registers and dispatches them here.

Frozen evaluations take either a checkpoint with labelled ``--train``/``--test`` data (features are read
from the cache, or extracted once and cached) or two features files written by ``openseer embed``.
Every command prints a short table and writes its full result as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TOP_LEVEL = ("embed", "report")


def _frozen_inputs(p: argparse.ArgumentParser, with_data: bool = True) -> None:
    if with_data:
        p.add_argument("--checkpoint", help="run dir, backbone.safetensors or a .pt checkpoint")
        p.add_argument("--train", help="labelled train images: <class>/<image> folder or a tar")
        p.add_argument("--test", help="labelled test images: <class>/<image> folder or a tar")
    p.add_argument("--train-features", help="features file from `openseer embed` (instead of --train)")
    p.add_argument("--test-features", help="features file from `openseer embed` (instead of --test)")
    p.add_argument("--layer", default="pooled", help="'pooled' (default) or a stage name/index, e.g. s3")
    p.add_argument("--cache-dir", help="feature cache folder [RUN_DIR/features or beside the checkpoint]")
    for flag in ("--image-size", "--batch-size", "--num-workers"):
        if flag not in p._option_string_actions:
            default = {"--batch-size": 256, "--num-workers": -1}.get(flag, 0)
            p.add_argument(flag, type=int, default=default)
    if "--crop-pct" not in p._option_string_actions:
        p.add_argument("--crop-pct", type=float, default=0.0, help="resize-to-crop ratio [from the run]")
    if "--device" not in p._option_string_actions:
        p.add_argument("--device", default="auto")
    if "--out" not in p._option_string_actions:
        p.add_argument("--out", help="write the results as JSON here")


def _floats(text: str, name: str) -> tuple[float, ...]:
    from openseer.config import ConfigError

    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{name} {text!r} must be comma-separated numbers") from None
    if not values:
        raise ConfigError(f"{name} is empty")
    return values


def _ints(text: str, name: str) -> tuple[int, ...]:
    from openseer.config import ConfigError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{name} {text!r} must be comma-separated integers, e.g. 10,20,200") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{name} {text!r} must hold positive integers")
    return values


def add_parsers(sub, evs, knn: argparse.ArgumentParser, pretrain: argparse.ArgumentParser) -> None:
    """Register the evaluation commands on the ``openseer`` parser (called by `openseer.cli`)."""
    em = sub.add_parser("embed", help="extract (and cache) frozen features of labelled images")
    em.add_argument("--checkpoint", required=True, help="run dir, backbone.safetensors or a .pt checkpoint")
    em.add_argument("--data", required=True, help="labelled images: <class>/<image> folder or a tar")
    em.add_argument("--out", required=True, help="features file (.pt); reused when its inputs are unchanged")
    em.add_argument("--layer", default="pooled", help="'pooled' (default) or a stage name/index, e.g. s3")
    em.add_argument("--image-size", type=int, default=0)
    em.add_argument("--crop-pct", type=float, default=0.0)
    em.add_argument("--batch-size", type=int, default=256)
    em.add_argument("--num-workers", type=int, default=-1)
    em.add_argument("--device", default="auto")

    _frozen_inputs(knn, with_data=False)
    for action in knn._actions:  # features files can replace --checkpoint/--train/--test
        if action.dest in ("checkpoint", "train", "test"):
            action.required = False

    lin = evs.add_parser("linear", help="grid of linear probes on frozen features (val split from train)")
    _frozen_inputs(lin)
    lin.add_argument("--lrs", default="0.01,0.03,0.1,0.3,1.0", help="learning rates of the grid")
    lin.add_argument("--wds", default="0,1e-4,1e-3", help="weight decays of the grid")
    lin.add_argument("--epochs", type=int, default=30)
    lin.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out to choose")
    lin.add_argument("--seed", type=int, default=0)

    low = evs.add_parser("lowshot", help="linear + kNN on class-balanced label fractions over seeds")
    _frozen_inputs(low)
    low.add_argument("--fractions", default="0.01,0.1", help="label fractions per class [0.01,0.1]")
    low.add_argument("--seeds", type=int, default=3, help="number of seeded subsets per fraction [3]")
    low.add_argument("--k", default="10,20", help="kNN k values [10,20]")
    low.add_argument("--lrs", default="0.01,0.03,0.1,0.3,1.0")
    low.add_argument("--wds", default="0,1e-4,1e-3")
    low.add_argument("--epochs", type=int, default=30)
    low.add_argument("--subsets-out", help="JSON of the chosen subsets [beside --out, else not written]")

    ft = evs.add_parser("finetune", help="fine-tune backbone + new head on a labelled fraction")
    ft.add_argument("--checkpoint", required=True, help="run dir, backbone.safetensors or a .pt checkpoint")
    ft.add_argument("--train", required=True, help="labelled train images: <class>/<image> folder or a tar")
    ft.add_argument("--test", required=True, help="labelled test images: <class>/<image> folder or a tar")
    ft.add_argument("--fraction", type=float, default=0.1, help="class-balanced share of train labels [0.1]")
    ft.add_argument("--epochs", type=int, default=10, help="passes over the labelled subset [10]")
    ft.add_argument("--lr-backbone", type=float, default=0.01, help="peak lr of the backbone (SGD, cosine) [0.01]")
    ft.add_argument("--lr-head", type=float, default=0.1, help="peak lr of the new linear head [0.1]")
    ft.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay [0]")
    ft.add_argument("--batch-size", type=int, default=64, help="images per step [64]")
    ft.add_argument("--seed", type=int, default=0, help="seed of the subset, order and augmentation [0]")
    ft.add_argument("--image-size", type=int, default=0, help="image side [0: the run's eval size]")
    ft.add_argument("--crop-pct", type=float, default=0.0, help="test centre-crop fraction [0: the run's]")
    ft.add_argument("--num-workers", type=int, default=-1, help="DataLoader workers [-1: from the cores]")
    ft.add_argument("--device", default="auto", help="auto, cpu or cuda [auto]")
    ft.add_argument("--out", help="also write the result JSON to this file")

    al = evs.add_parser(
        "all", help="kNN, linear, low-shot (and fine-tune) of a backbone and of its random-init floor, one table"
    )
    al.add_argument("--checkpoint", required=True, help="run dir, backbone.safetensors or a .pt checkpoint")
    al.add_argument("--train", required=True, help="labelled train images: <class>/<image> folder or a tar")
    al.add_argument("--test", required=True, help="labelled test images: <class>/<image> folder or a tar")
    al.add_argument("--out-dir", help="folder for the JSONs, summary.md and summary.json [RUN_DIR/eval]")
    al.add_argument("--k", default="10,20,200", help="kNN k values [10,20,200]")
    al.add_argument("--fractions", default="0.01,0.1", help="low-shot label fractions [0.01,0.1]")
    al.add_argument("--seeds", type=int, default=3, help="seeded subsets per fraction [3]")
    al.add_argument(
        "--finetune",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="also fine-tune on this label fraction, e.g. 0.1 [0: skip, the slow one]",
    )
    al.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs [10]")
    al.add_argument("--no-baseline", action="store_true", help="skip the random-init floor")
    al.add_argument("--image-size", type=int, default=0, help="image side [0: the run's eval size]")
    al.add_argument("--crop-pct", type=float, default=0.0, help="centre-crop fraction [0: the run's]")
    al.add_argument("--num-workers", type=int, default=-1, help="DataLoader workers [-1: from the cores]")
    al.add_argument("--device", default="auto", help="auto, cpu or cuda [auto]")

    rep = sub.add_parser("report", help="report.html + PNGs of a run: curves, neighbours, prototypes, evals")
    rep.add_argument("run_dir", help="an openseer run directory")
    rep.add_argument("--data", help="images for the neighbour/prototype grids [the run's data.path]")
    rep.add_argument("--max-images", type=int, default=2000, help="images embedded for the grids [2000]")
    rep.add_argument("--queries", type=int, default=8, help="query images in the neighbour grid [8]")
    rep.add_argument("--prototypes", type=int, default=8, help="prototypes shown [8]")
    rep.add_argument("--seed", type=int, default=0)

    g = pretrain.add_argument_group("online kNN monitor")
    g.add_argument("--monitor-train", help="labelled images used as the kNN bank while training [monitor.train]")
    g.add_argument("--monitor-test", help="labelled images classified by the monitor [monitor.test]")
    g.add_argument("--monitor-every", type=int, help="steps between monitor runs [monitor.every: 100]")
    g.add_argument("--monitor-max-train", type=int, help="class-balanced cap [monitor.max_train: 5000]")
    g.add_argument("--monitor-max-test", type=int, help="class-balanced cap [monitor.max_test: 1000]")


def monitor_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--monitor-*`` options as config overrides (they live in the ``monitor`` section of config.yaml)."""
    out = []
    for key in ("train", "test", "every", "max_train", "max_test"):
        value = getattr(args, f"monitor_{key}", None)
        if value is not None:
            out.append(f"monitor.{key}={json.dumps(value)}")
    return out


def _load_pair(args: argparse.Namespace):
    """(train, test, meta) features from files or from the cache (extracting when needed)."""
    from openseer.config import ConfigError
    from openseer.eval.cache import cached_features, check_pair, load_features

    if args.train_features or args.test_features:
        if not (args.train_features and args.test_features):
            raise ConfigError("--train-features and --test-features go together")
        train, _, train_meta = load_features(args.train_features)
        test, _, test_meta = load_features(args.test_features)
    else:
        if not (args.checkpoint and args.train and args.test):
            raise ConfigError("give --checkpoint, --train and --test, or --train-features and --test-features")
        from openseer.checkpoint import load_backbone

        backbone, config = load_backbone(args.checkpoint)
        options = dict(
            cache_dir=args.cache_dir,
            layer=args.layer,
            image_size=args.image_size,
            crop_pct=args.crop_pct,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            backbone=backbone,
            config=config,
        )
        train, train_meta = cached_features(args.checkpoint, args.train, **options)
        test, test_meta = cached_features(args.checkpoint, args.test, **options)
    check_pair(train, test, train_meta, test_meta)
    meta = {
        "checkpoint": train_meta.get("checkpoint"),
        "train": train_meta.get("data"),
        "test": test_meta.get("data"),
        "layer": train_meta.get("settings", {}).get("layer"),
        "features_cached": [bool(train_meta.get("cached")), bool(test_meta.get("cached"))],
        "feature_files": [train_meta.get("path"), test_meta.get("path")],
    }
    return train, test, meta


def _write(result: dict[str, Any], out: str | None) -> None:
    if out:
        from openseer.checkpoint import atomic_write

        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))


def run(args: argparse.Namespace) -> int:
    """Dispatch ``embed``, ``report`` and every ``eval`` subcommand."""
    from openseer.config import ConfigError

    try:
        return _run(args)
    except ValueError as e:  # argument values the functions reject (bad layer, fraction, ...)
        from openseer.checkpoint import CheckpointError
        from openseer.data import DataError

        if isinstance(e, (ConfigError, DataError, CheckpointError)):
            raise
        raise ConfigError(str(e)) from None


def _run(args: argparse.Namespace) -> int:
    if args.command == "embed":
        from openseer.eval.cache import cached_features

        feats, meta = cached_features(
            args.checkpoint,
            args.data,
            out=args.out,
            layer=args.layer,
            image_size=args.image_size,
            crop_pct=args.crop_pct,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
        )
        state = "reused cached" if meta["cached"] else "extracted"
        print(f"{state} {len(feats)} x {feats.dim} features ({len(feats.classes)} classes) -> {args.out}")
        return 0
    if args.command == "report":
        from openseer.report import write_report

        path = write_report(
            args.run_dir,
            data=args.data,
            max_images=args.max_images,
            queries=args.queries,
            prototypes=args.prototypes,
            seed=args.seed,
        )
        print(f"wrote {path}")
        return 0
    if args.eval_command == "all":
        from openseer.eval.suite import run_suite

        summary = run_suite(
            args.checkpoint,
            args.train,
            args.test,
            out_dir=args.out_dir,
            ks=_ints(args.k, "--k"),
            fractions=_floats(args.fractions, "--fractions"),
            seeds=args.seeds,
            baseline=not args.no_baseline,
            finetune_fraction=args.finetune,
            finetune_epochs=args.finetune_epochs,
            image_size=args.image_size,
            crop_pct=args.crop_pct,
            num_workers=args.num_workers,
            device=args.device,
        )
        print(summary["table"])
        print(f"results in {summary['out_dir']} (summary.md, summary.json, one JSON per evaluation)")
        return 0
    if args.eval_command == "finetune":
        from openseer.checkpoint import load_backbone
        from openseer.eval.finetune import finetune

        backbone, config = load_backbone(args.checkpoint)
        result = finetune(
            backbone,
            config,
            args.train,
            args.test,
            fraction=args.fraction,
            epochs=args.epochs,
            lr_backbone=args.lr_backbone,
            lr_head=args.lr_head,
            weight_decay=args.weight_decay,
            batch_size=args.batch_size,
            seed=args.seed,
            image_size=args.image_size,
            crop_pct=args.crop_pct,
            num_workers=args.num_workers,
            device=args.device,
        )
        result["checkpoint"] = str(args.checkpoint)
        print(f"fine-tune on {result['num_train']} labels: test top-1 {100 * result['top1']:.2f}%")
        _write(result, args.out)
        return 0
    ks = _ints(args.k, "--k") if args.eval_command in ("knn", "lowshot") else ()  # before any slow work
    train, test, meta = _load_pair(args)
    if args.eval_command == "knn":
        from openseer.eval.knn import format_table, knn_classify

        top1 = knn_classify(
            train.features, train.labels, test.features, test.labels, ks=ks, temperature=args.temperature
        )
        result = {"eval": "knn", "top1": {str(k): v for k, v in top1.items()}, "k": list(ks)}
        result.update(temperature=args.temperature, num_train=len(train), num_test=len(test))
        result.update(num_failed=train.num_failed + test.num_failed, feature_dim=train.dim)
        print(format_table(top1, f"kNN top-1 ({meta['checkpoint']})"))
    elif args.eval_command == "linear":
        from openseer.eval.linear import linear_probe

        result = linear_probe(
            train.features,
            train.labels,
            test.features,
            test.labels,
            len(train.classes),
            _floats(args.lrs, "--lrs"),
            _floats(args.wds, "--wds"),
            epochs=args.epochs,
            val_fraction=args.val_fraction,
            seed=args.seed,
        )
        print(
            f"linear probe: test top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}% "
            f"(lr {result['best']['lr']}, wd {result['best']['wd']}, chosen on {result['num_val']} val)"
        )
    else:
        from openseer.eval.lowshot import run_lowshot

        subsets_out = args.subsets_out or (str(Path(args.out).with_suffix(".subsets.json")) if args.out else None)
        result = run_lowshot(
            train,
            test,
            _floats(args.fractions, "--fractions"),
            args.seeds,
            ks=ks,
            lrs=_floats(args.lrs, "--lrs"),
            wds=_floats(args.wds, "--wds"),
            epochs=args.epochs,
            subsets_out=subsets_out,
        )
        for fraction, r in result["results"].items():
            knn = ", ".join(f"k={k} {100 * v['mean']:.2f}±{100 * v['std']:.2f}" for k, v in r["knn_top1"].items())
            lin = r["linear_top1"]
            print(f"{float(fraction):.0%} labels: linear {100 * lin['mean']:.2f}±{100 * lin['std']:.2f}; kNN {knn}")
    result.update(meta)
    _write(result, args.out)
    return 0
