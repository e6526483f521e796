"""Evaluation entry points that start from a checkpoint or run directory (used by the CLI and the demo)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from openseer.config import Config, config_from_dict


def eval_settings(
    config: dict[str, Any] | Config, image_size: int = 0, crop_pct: float = 0.0
) -> dict[str, Any]:
    """Image size, crop ratio and normalisation for evaluating a run's backbone (explicit values win)."""
    cfg = config if isinstance(config, Config) else config_from_dict(config) if config else Config()
    return {
        "image_size": image_size or cfg.eval.image_size or cfg.aug.global_size,
        "crop_pct": crop_pct or cfg.eval.crop_pct,
        "mean": tuple(cfg.aug.mean),
        "std": tuple(cfg.aug.std),
        "precision": cfg.train.precision,
        "channels_last": cfg.model.channels_last,
    }


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def knn_for_backbone(
    backbone: nn.Module,
    config: dict[str, Any] | Config,
    train: str,
    test: str,
    ks: tuple[int, ...] = (10, 20, 200),
    temperature: float = 0.07,
    image_size: int = 0,
    crop_pct: float = 0.0,
    batch_size: int = 256,
    num_workers: int = -1,
    device: str = "auto",
) -> dict[str, Any]:
    from openseer.data import auto_num_workers, eval_transform, open_source
    from openseer.eval.knn import run_knn

    s = eval_settings(config, image_size, crop_pct)
    transform = eval_transform(s["image_size"], s["crop_pct"], s["mean"], s["std"])
    device = pick_device(device)
    backbone = backbone.to(device)
    result = run_knn(
        backbone,
        open_source(train, labelled=True),
        open_source(test, labelled=True),
        transform,
        ks=ks,
        temperature=temperature,
        batch_size=batch_size,
        num_workers=auto_num_workers(num_workers),
        device=device,
        precision="bf16" if s["precision"] == "bf16" else "fp32",
        channels_last=s["channels_last"],
    )
    result["image_size"] = s["image_size"]
    return result


def knn_from_checkpoint(checkpoint: str, train: str, test: str, **kwargs: Any) -> dict[str, Any]:
    from openseer.checkpoint import load_backbone

    backbone, config = load_backbone(checkpoint)
    result = knn_for_backbone(backbone, config, train, test, **kwargs)
    result["checkpoint"] = str(checkpoint)
    return result
