"""The inputs of the frozen-feature commands (knn, linear, lowshot, ...): a checkpoint with labelled data, or
two features files from ``openseer embed``."""

from __future__ import annotations

import argparse
from typing import Any

from openseer.cli.common import Parents
from openseer.errors import ConfigError
from openseer.eval.cache import check_pair, load_features
from openseer.eval.knn import align_labels


def add_frozen_parser(sub: argparse._SubParsersAction, parents: Parents, name: str, help: str):
    """The parser of a frozen-feature command, with its shared flags (``--checkpoint --train --test`` are
    optional: ``--train-features --test-features`` can replace them)."""
    optional = [parents.checkpoint_optional, parents.pair_optional]
    return sub.add_parser(
        name, help=help, parents=[*optional, parents.features, parents.layer, parents.settings, parents.out]
    )


def frozen_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """`openseer.eval.pipeline.run_evaluation`'s inputs: the ``features`` of ``--train-features/--test-features``
    (train, test, meta), or the checkpoint and labelled pair whose cached features it will use."""
    if args.train_features or args.test_features:
        if not (args.train_features and args.test_features):
            raise ConfigError("--train-features and --test-features go together")
        train, _, train_meta = load_features(args.train_features)
        test, _, test_meta = load_features(args.test_features)
        check_pair(train, test, train_meta, test_meta)
        meta = {
            "checkpoint": train_meta.get("checkpoint"),
            "train": train_meta.get("data"),
            "test": test_meta.get("data"),
            "layer": train_meta.get("settings", {}).get("layer"),
            "features_cached": [True, True],
            "feature_files": [args.train_features, args.test_features],
        }
        features = (train, align_labels(train, test), meta)
        return {"checkpoint": None, "train": None, "test": None, "features": features}
    if not (args.checkpoint and args.train and args.test):
        raise ConfigError("give --checkpoint, --train and --test, or --train-features and --test-features")
    inputs = {"checkpoint": args.checkpoint, "train": args.train, "test": args.test}
    return {**inputs, "layer": args.layer, "cache_dir": args.cache_dir}
