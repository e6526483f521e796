"""The Python API: the same functions the ``openseer`` command calls, for notebooks and other programs.

Example::

    import openseer

    summary = openseer.pretrain("cifar10", data="~/images", out="runs/a", init="timm:regnety_016.tv2_in1k",
                                train={"max_steps": 200})
    backbone = openseer.load_backbone("runs/a")                       # a timm model, pooled features
    maps = openseer.load_backbone("runs/a", features_only=True)       # multi-scale maps for detection
    knn = openseer.evaluate("runs/a", train="lab/train", test="lab/test", protocol="knn")
    feats = openseer.embed("runs/a", "lab/test")                      # Features: .features, .labels, .classes

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

from openseer.checkpoint import load_backbone as load_with_config
from openseer.config import Config, ConfigError, config_from_dict, load_config, set_value, to_dict, validate
from openseer.eval.cache import cached_features
from openseer.eval.finetune import finetune
from openseer.eval.linear import linear_probe
from openseer.eval.lowshot import run_lowshot
from openseer.eval.pipeline import frozen_pair, knn_from_checkpoint
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


def _settings(options: dict[str, Any]) -> EvalSettings:
    """Pop the feature-extraction options (image_size, crop_pct, batch_size, num_workers, device)."""
    keys = ("image_size", "crop_pct", "batch_size", "num_workers", "device")
    return EvalSettings(**{k: options.pop(k) for k in keys if k in options})


def evaluate(
    source: str | Path, train: str | Path, test: str | Path, protocol: str = "knn", **options: Any
) -> dict[str, Any]:
    """``openseer eval PROTOCOL``: ``knn``, ``linear``, ``lowshot``, ``finetune`` or ``all``; returns its JSON dict.

    ``options`` are the keyword arguments of the protocol's function (e.g. ``ks=(10, 20)``, ``fractions=``,
    ``epochs=``) plus the feature-extraction settings ``image_size=``, ``crop_pct=``, ``batch_size=``,
    ``num_workers=``, ``device=`` (:class:`openseer.eval.EvalSettings`).
    """
    train, test, source = str(train), str(test), str(source)
    if protocol not in ("knn", "linear", "lowshot", "finetune", "all"):
        raise ConfigError(f"unknown protocol {protocol!r}; choose knn, linear, lowshot, finetune or all")
    settings = _settings(options)
    if protocol == "all":
        return run_suite(source, train, test, settings=settings, **options)
    if protocol == "knn":
        return knn_from_checkpoint(source, train, test, settings=settings, **options)
    if protocol == "finetune":
        backbone, config = load_with_config(source)
        return finetune(backbone, config, train, test, settings=settings, **options)
    train_f, test_f, _ = frozen_pair(source, train, test, settings)
    if protocol == "linear":
        return linear_probe(train_f.features, train_f.labels, test_f.features, test_f.labels, **options)
    return run_lowshot(train_f, test_f, **options)


def embed(source: str | Path, data: str | Path | torch.Tensor, **options: Any) -> Any:
    """Frozen features: of labelled images on disk (``Features`` with ``.features``, ``.labels``, ``.classes``,
    cached as ``openseer embed`` does), or of a batch of normalised images ``(N, 3, H, W)`` (a tensor)."""
    if torch.is_tensor(data):
        backbone = load_backbone(source)
        with torch.no_grad():
            return backbone(data)
    settings = _settings(options)
    features, _ = cached_features(str(source), str(data), settings=settings, **options)
    return features
