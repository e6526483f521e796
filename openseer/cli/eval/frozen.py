"""The inputs of the frozen-feature commands (knn, linear, lowshot): a checkpoint with labelled data, or two
features files from ``openseer embed``."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, eval_settings
from openseer.errors import ConfigError
from openseer.eval.cache import check_pair, load_features
from openseer.eval.features import Features
from openseer.eval.knn import align_labels
from openseer.eval.pipeline import frozen_pair


def add_frozen_parser(sub: argparse._SubParsersAction, parents: Parents, name: str, help: str):
    """The parser of a frozen-feature command, with its shared flags (``--checkpoint --train --test`` are
    optional: ``--train-features --test-features`` can replace them)."""
    optional = [parents.checkpoint_optional, parents.pair_optional]
    return sub.add_parser(
        name, help=help, parents=[*optional, parents.features, parents.layer, parents.settings, parents.out]
    )


def load_pair(args: argparse.Namespace) -> tuple[Features, Features, dict]:
    """(train, test, meta) features from ``--train-features/--test-features`` or from the cache."""
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
        return train, align_labels(train, test), meta
    if not (args.checkpoint and args.train and args.test):
        raise ConfigError("give --checkpoint, --train and --test, or --train-features and --test-features")
    return frozen_pair(args.checkpoint, args.train, args.test, eval_settings(args), args.layer, args.cache_dir)
