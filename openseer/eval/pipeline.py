"""The frozen-feature evaluation path, from a checkpoint to a result: every command, the demo and the tests
take it.

    checkpoint + labelled folder --(`cached_features`: extract once, cache)--> `Features`
    train/test `Features` --(`check_pair`)--> kNN (`knn_result`), linear probes, low-shot subsets

`frozen_pair` gives the checked train/test features of a checkpoint; `knn_from_checkpoint` scores them with
the weighted kNN; `run_evaluation` runs any registered evaluation (`openseer.eval.registry`) on a checkpoint.
`random_init_backbone` writes the floor every evaluation is compared with: the checkpoint's architecture with
freshly initialised weights (seeded with the run's seed), exported like a pretrained backbone so that the same
code evaluates it and caches its features.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from openseer.checkpoint import export_backbone
from openseer.config import dump_yaml
from openseer.eval.cache import cached_features, check_pair
from openseer.eval.features import Features
from openseer.eval.knn import DEFAULT_KS, align_labels, knn_result
from openseer.eval.registry import Evaluation
from openseer.eval.settings import FROM_RUN, EvalSettings, as_config
from openseer.io import atomic_write_json, atomic_write_text
from openseer.models.backbone import create_backbone_from_spec
from openseer.weights.load import load_backbone, read_backbone_spec

RANDOM_INIT = "random_init"


def frozen_pair(
    checkpoint: str | os.PathLike[str],
    train: str | os.PathLike[str],
    test: str | os.PathLike[str],
    settings: EvalSettings = FROM_RUN,
    layer: str = "pooled",
    cache_dir: str | os.PathLike[str] | None = None,
    backbone: torch.nn.Module | None = None,
    config: dict[str, Any] | None = None,
) -> tuple[Features, Features, dict[str, Any]]:
    """Cached features of a labelled train/test pair under ``checkpoint``, checked to be scorable together,
    test labels numbered as train's (``backbone``, ``config``: the checkpoint's, when already loaded).

    Returns:
        (train, test, meta); meta names the checkpoint, the data, the layer, whether each split came from the
        cache and the feature files.
    """
    if backbone is None:
        backbone, config = load_backbone(checkpoint)
    options = dict(settings=settings, layer=layer, cache_dir=cache_dir, backbone=backbone, config=config)
    train_f, train_meta = cached_features(checkpoint, train, **options)
    test_f, test_meta = cached_features(checkpoint, test, **options)
    check_pair(train_f, test_f, train_meta, test_meta)
    return train_f, align_labels(train_f, test_f), pair_meta(train_meta, test_meta)


def pair_meta(train_meta: dict[str, Any], test_meta: dict[str, Any]) -> dict[str, Any]:
    """What a result records about the features it was computed from."""
    return {
        "checkpoint": train_meta.get("checkpoint"),
        "train": train_meta.get("data"),
        "test": test_meta.get("data"),
        "layer": train_meta.get("settings", {}).get("layer"),
        "features_cached": [bool(train_meta.get("cached")), bool(test_meta.get("cached"))],
        "feature_files": [train_meta.get("path"), test_meta.get("path")],
    }


def knn_from_checkpoint(
    checkpoint: str | os.PathLike[str],
    train: str | os.PathLike[str],
    test: str | os.PathLike[str],
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    settings: EvalSettings = FROM_RUN,
    layer: str = "pooled",
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Weighted-kNN top-1 of ``checkpoint``'s frozen features (`openseer.eval.knn.knn_result` plus `pair_meta`)."""
    train_f, test_f, meta = frozen_pair(checkpoint, train, test, settings, layer, cache_dir)
    return {**knn_result(train_f, test_f, ks, temperature), **meta}


def run_evaluation(
    entry: Evaluation,
    checkpoint: str | os.PathLike[str] | None,
    train: str | os.PathLike[str] | None,
    test: str | os.PathLike[str] | None,
    settings: EvalSettings = FROM_RUN,
    layer: str = "pooled",
    cache_dir: str | os.PathLike[str] | None = None,
    features: tuple[Features, Features, dict[str, Any]] | None = None,
    model: tuple[torch.nn.Module, dict[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run one registered evaluation on ``checkpoint`` and a labelled train/test pair: the one path of the
    command, the API and the suite.

    A frozen evaluation gets the pair's features (``features`` when already at hand, e.g. from ``openseer
    embed`` files, else `frozen_pair`) and its result gains their `pair_meta`; any other gets the backbone
    (``model``: the checkpoint's (backbone, config) when already loaded) and its result names the checkpoint.
    ``options`` are the evaluation's own keywords.
    """
    if entry.frozen:
        train_f, test_f, meta = features or frozen_pair(
            checkpoint, train, test, settings, layer, cache_dir, *(model or (None, None))
        )
        return {**entry.run(train_f, test_f, **options), **meta}
    backbone, config = model or load_backbone(checkpoint)
    result = entry.run(backbone, config, str(train), str(test), settings=settings, **options)
    return {**result, "checkpoint": str(checkpoint)}


def random_init_backbone(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """The random-init floor of ``checkpoint``: its architecture, freshly initialised with the run's seed
    (``train.seed``, 0 when unknown), exported into ``out_dir/random_init`` with the run's config beside it,
    so that every evaluation treats it exactly like the pretrained backbone. Reused while it matches."""
    spec, config = read_backbone_spec(checkpoint)
    seed = as_config(config).train.seed
    target = Path(out_dir) / RANDOM_INIT
    target.mkdir(parents=True, exist_ok=True)
    if config:
        text = dump_yaml(as_config(config))
        atomic_write_text(target / "config.yaml", text)
    marker = target / "random_init.json"
    made_from = {"spec": spec, "seed": seed}
    fresh = (target / "backbone.safetensors").is_file() and marker.is_file()
    if not fresh or json.loads(marker.read_text()) != made_from:  # absent, or left by another architecture
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            export_backbone(target, create_backbone_from_spec(spec), spec)
        atomic_write_json(marker, made_from)
    return target
