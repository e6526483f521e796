"""The Python API: the same functions the ``openseer`` command calls, for notebooks and other programs.

Example::

    import openseer

    summary = openseer.pretrain("cifar10", data="~/images", out="runs/a", init="timm:regnety_016.tv2_in1k",
                                train={"max_steps": 200})
    backbone = openseer.load_backbone("runs/a")                       # a timm model, pooled features
    maps = openseer.load_backbone("runs/a", features_only=True)       # multi-scale maps for detection
    knn = openseer.evaluate("runs/a", train="lab/train", test="lab/test", protocol="knn")
    feats = openseer.embed("runs/a", "lab/test")                      # Features: .features, .labels, .classes
    openseer.curate("pool/", "runs/a", out="curated", eval_sets=["lab/test"], target=10000)  # curated.txt

Every ``source`` is a run directory or any SOURCE of :mod:`openseer.weights.sources` (``timm:`` tags, VISSL /
SwAV / DINO / torchvision / timm checkpoint files).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.models import FeatureListNet
from torch import nn

from openseer.config import Config, ConfigError, config_from_dict, load_config, set_value, to_dict, validate
from openseer.curate import CurateOptions
from openseer.curate import curate as run_curate
from openseer.eval.cache import cached_features
from openseer.eval.pipeline import run_evaluation
from openseer.eval.registry import get_evaluation
from openseer.eval.settings import EvalSettings
from openseer.eval.suite import run_suite
from openseer.train import pretrain as run_pretrain
from openseer.train.budget import check_minutes
from openseer.weights.sources import backbone_from_source


def build_config(
    config_or_preset: Config | str | None = None, data: str | Path | None = None, **overrides: Any
) -> Config:
    """A validated config from a preset name / YAML file / Config, plus overrides.

    Overrides are sections as dicts (``train={"max_steps": 10}``) or ``section__field=value``
    (``train__max_steps=10``); both are checked like ``a.b=value`` on the command line.
    """
    dotted: list[tuple[str, Any]] = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            dotted += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            dotted.append((key.replace("__", "."), value))
    if data is not None:
        dotted.append(("data.path", str(data)))
    if isinstance(config_or_preset, Config):
        cfg = config_from_dict(to_dict(config_or_preset))
        for key, value in dotted:
            set_value(cfg, key, value)
        validate(cfg)
        return cfg
    return load_config(config_or_preset, [f"{k}={json.dumps(v)}" for k, v in dotted])


def pretrain(
    config_or_preset: Config | str | None = None,
    data: str | Path | None = None,
    out: str | Path = "runs/openseer",
    init: str | None = None,
    init_strict: bool = True,
    resume: bool = True,
    minutes: float | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Pretrain as ``openseer pretrain`` does; returns the run summary (also in ``out/summary.json``).

    ``init`` starts from pretrained weights (any SOURCE; ``model.init`` in the config), ``init_strict=False``
    loads what fits and prints the rest. ``minutes`` is a wall-clock budget (``train.minutes``): the schedules
    span the steps that a throughput probe says fit; the summary's ``budget`` holds planned and used minutes.
    """
    if minutes is not None:
        check_minutes(minutes, "minutes")
        overrides["train__minutes"] = minutes
    if init is not None:
        overrides["model__init"] = str(init)
        overrides["model__init_strict"] = init_strict
    cfg = build_config(config_or_preset, data, **overrides)
    if not cfg.data.path:
        raise ConfigError("pretrain needs data=... (a folder, tar, file list or shards of images)")
    return run_pretrain(cfg, out, resume=resume)


def load_backbone(
    source: str | Path,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    strict: bool = True,
) -> nn.Module:
    """The pretrained backbone of a run directory or SOURCE, in eval mode on the CPU.

    ``features_only``: timm's multi-scale feature maps instead of pooled features (a list of tensors, one per
    ``out_indices`` entry of ``model.feature_info``; default all: stem and every stage).
    """
    backbone, _ = backbone_from_source(source, strict=strict)
    if not features_only:
        return backbone
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise ConfigError(f"{source}: this backbone has no timm feature_info; features_only needs a timm convnet")
    indices = tuple(out_indices) if out_indices is not None else tuple(range(len(info)))
    return FeatureListNet(backbone, out_indices=indices).eval()


def evaluate(
    source: str | Path, train: str | Path, test: str | Path, protocol: str = "knn", **options: Any
) -> dict[str, Any]:
    """``openseer eval PROTOCOL``: a registered evaluation (built in: ``knn``, ``linear``, ``lowshot``,
    ``finetune``; `openseer.eval.registry`) or ``all``; returns its JSON dict.

    ``options`` are the keyword arguments of the protocol's function (e.g. ``ks=(10, 20)``, ``fractions=``,
    ``epochs=``) plus the feature-extraction settings ``image_size=``, ``crop_pct=``, ``batch_size=``,
    ``num_workers=``, ``device=`` (:class:`openseer.eval.EvalSettings`); frozen evaluations also take
    ``layer=`` and ``cache_dir=``.
    """
    train, test, source = str(train), str(test), str(source)
    settings = EvalSettings.pop_from(options)
    if protocol == "all":
        return run_suite(source, train, test, settings=settings, **options)
    entry = get_evaluation(protocol)
    inputs = {k: options.pop(k) for k in ("layer", "cache_dir") if entry.frozen and k in options}
    return run_evaluation(entry, source, train, test, settings, **inputs, **options)


def embed(source: str | Path, data: str | Path | torch.Tensor, **options: Any) -> Any:
    """Frozen features: of labelled images on disk (``Features`` with ``.features``, ``.labels``, ``.classes``,
    cached as ``openseer embed`` does), or of a batch of normalised images ``(N, 3, H, W)`` (a tensor)."""
    if torch.is_tensor(data):
        backbone = load_backbone(source)
        with torch.no_grad():
            return backbone(data)
    settings = EvalSettings.pop_from(options)
    features, _ = cached_features(str(source), str(data), settings=settings, **options)
    return features


def curate(
    data: str | Path, model: str | Path, out: str | Path, eval_sets: Sequence[str] = (), **options: Any
) -> dict[str, Any]:
    """``openseer curate``: dedup, leakage removal and balanced sampling of the pool ``data`` into ``out``
    (``curated.txt``, ``summary.json``, ``report.html``); returns the summary (docs/curation.md).

    ``options`` are the fields of :class:`openseer.curate.CurateOptions` (``target=``, ``dedup_threshold=``, ...)
    plus the feature-extraction settings ``image_size=``, ``crop_pct=``, ``batch_size=``, ``num_workers=``,
    ``device=``.
    """
    settings = EvalSettings.pop_from(options)
    opts = CurateOptions.from_kwargs(**options)
    return run_curate(str(data), str(model), str(out), [str(e) for e in eval_sets], settings, opts)
