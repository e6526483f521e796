"""How a backbone is evaluated: one typed settings object instead of five loose arguments.

Every evaluation (feature extraction and its cache, kNN, linear and low-shot probes, fine-tuning, the online
monitor, the report) preprocesses images the same way: resize the shorter side to ``image_size / crop_pct``,
centre-crop ``image_size``, normalise with the run's mean/std, run under the run's precision. `EvalSettings`
holds what a user chooses on the command line (0 or ``"auto"`` = take it from the run's config);
:meth:`EvalSettings.resolve` fills the gaps from the run's config once, giving a `ResolvedEval` that every
consumer reads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from openseer.config import Config, config_from_dict
from openseer.data import auto_num_workers, eval_transform
from openseer.errors import ConfigError


def pick_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def as_config(config: dict[str, Any] | Config | None) -> Config:
    """A run's config as `Config` (a dict read from a checkpoint is checked; None or {} -> the defaults)."""
    if isinstance(config, Config):
        return config
    return config_from_dict(config) if config else Config()


@dataclass(frozen=True)
class EvalSettings:
    """What the user chose for an evaluation (``openseer eval ... --image-size --crop-pct --batch-size
    --num-workers --device``).

    Attributes:
        image_size: evaluation image side; 0 = the run's ``eval.image_size``, else its global crop size.
        crop_pct: resize-to-crop ratio; 0 = the run's ``eval.crop_pct``.
        batch_size: images per forward pass of feature extraction; 0 = the run's ``eval.batch_size``.
        num_workers: DataLoader workers; -1 = from the cores available (`openseer.data.auto_num_workers`).
        device: ``"auto"`` (cuda if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    image_size: int = 0
    crop_pct: float = 0.0
    batch_size: int = 0
    num_workers: int = -1
    device: str = "auto"

    @classmethod
    def pop_from(cls, options: dict[str, Any]) -> EvalSettings:
        """The settings among keyword ``options`` (``image_size``, ``crop_pct``, ``batch_size``, ``num_workers``,
        ``device``), removed from them; what is absent keeps its default."""
        return cls(**{f.name: options.pop(f.name) for f in fields(cls) if f.name in options})

    def resolve(self, config: dict[str, Any] | Config | None) -> ResolvedEval:
        """Fill what was left to the run from its ``config`` (a `Config`, a config dict or None)."""
        if self.image_size < 0 or self.crop_pct < 0 or self.batch_size < 0:
            raise ConfigError(
                f"--image-size {self.image_size}, --crop-pct {self.crop_pct} and --batch-size {self.batch_size} "
                "must be >= 0 (0: from the run)"
            )
        cfg = as_config(config)
        return ResolvedEval(
            image_size=self.image_size or cfg.eval.image_size or cfg.aug.global_size,
            crop_pct=self.crop_pct or cfg.eval.crop_pct,
            batch_size=self.batch_size or cfg.eval.batch_size,
            num_workers=auto_num_workers(self.num_workers),
            device=pick_device(self.device),
            mean=tuple(cfg.aug.mean),
            std=tuple(cfg.aug.std),
            precision="bf16" if cfg.train.precision == "bf16" else "fp32",
            channels_last=cfg.model.channels_last,
        )


@dataclass(frozen=True)
class ResolvedEval:
    """Evaluation settings with nothing left to the run: what feature extraction actually uses.

    ``precision`` is the run's when it is bf16, else fp32 (fp16 autocast needs a scaler only training has).
    """

    image_size: int
    crop_pct: float
    batch_size: int
    num_workers: int
    device: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    precision: str
    channels_last: bool

    def transform(self):
        """The evaluation transform (`openseer.data.eval_transform`)."""
        return eval_transform(self.image_size, self.crop_pct, self.mean, self.std)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the features (not batch size, workers or device): part of a cache key."""
        return {
            "image_size": self.image_size,
            "crop_pct": self.crop_pct,
            "mean": list(self.mean),
            "std": list(self.std),
            "precision": self.precision,
        }


#: Everything from the run's config, workers from the cores, the GPU when there is one.
FROM_RUN = EvalSettings()
