"""Feature extraction from a frozen backbone, the first step of every evaluation.

Evaluations in the SEER paper (Goyal et al. 2021, "Self-supervised Pretraining of Visual Features in the
Wild") and in DINO (Caron et al. 2021, `eval_knn.py`) all start the same way: run the frozen backbone once
over a labelled split, keep the pooled features, and reuse them for kNN, linear probes and low-shot
subsets. This module does that one pass; normalisation is left to each consumer.

Images that could not be decoded come out of `openseer.data.LabelledDataset` with ``ok=False``; they are
dropped here and counted, so an evaluation never scores a black placeholder image.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from openseer.data import LabelledDataset
from openseer.errors import ConfigError, DataError
from openseer.parallel import PRECISION_DTYPES

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class Features:
    """Pooled features of one labelled split.

    Attributes:
        features: (N, D) float32 features on the CPU, not L2-normalised.
        labels: (N,) int64 class indices.
        names: per-row image names (when the dataset exposes ``source.name(i)``), else None.
        num_failed: images dropped because they could not be decoded.
        classes: class names in label order, when known (set by the feature cache).
    """

    features: Tensor
    labels: Tensor
    names: list[str] | None
    num_failed: int
    classes: list[str] | None = None

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return self.features.shape[1]


def _precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision``; fp32 runs without autocast."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISION_DTYPES[precision])


def _name_lookup(dataset: Dataset):
    """Return ``source.name`` of a LabelledDataset-like dataset, or None when it has none."""
    source = getattr(dataset, "source", None)
    name = getattr(source, "name", None)
    return name if callable(name) else None


def _progress(loader: DataLoader, enabled: bool, desc: str) -> Iterator:
    """Wrap ``loader`` in a tqdm bar when asked and stderr is an interactive terminal."""
    if enabled and sys.stderr.isatty():
        return iter(tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True))
    return iter(loader)


def _forward_pooled(backbone: nn.Module, images: Tensor, device: torch.device, channels_last: bool, autocast) -> Tensor:
    """The (B, D) float32 CPU features of one batch; a ValueError when the backbone does not pool."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast:
        output = backbone(images)
    if output.dim() != 2:
        raise ValueError(
            f"backbone must return pooled features (B, D), got shape {tuple(output.shape)}; "
            "build the timm model with num_classes=0"
        )
    return output.float().cpu()


def _concat(feature_chunks: list[Tensor], label_chunks: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The collected batches as one (N, D) features and one (N,) labels tensor (empty ones when none)."""
    if not feature_chunks:
        return torch.empty(0, 0, dtype=torch.float32), torch.empty(0, dtype=torch.int64)
    return torch.cat(feature_chunks), torch.cat(label_chunks)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = False,
) -> Features:
    """Run a frozen backbone over a labelled dataset and collect its pooled features.

    The dataset yields ``(image, label, ok)`` triples in order (no shuffling); items with ``ok=False``
    are never passed to the backbone, and are counted in ``num_failed``. The backbone is moved to
    ``device`` and put in eval mode (BatchNorm uses running statistics), and its previous train/eval
    mode is restored afterwards.

    Args:
        backbone: module whose ``forward(x)`` returns pooled features (B, D), e.g. a timm model built
            with ``num_classes=0``.
        dataset: map-style dataset of ``(image (3, H, W) float, label int, ok bool)``.
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes for decoding.
        device: where the forward passes run.
        precision: "fp32", or "bf16"/"fp16" under autocast; features are always returned as float32.
        channels_last: feed the backbone NHWC input (faster convolutions on recent GPUs); convolutions
            follow the input's memory format, so the backbone itself is not converted.
        progress: show a tqdm bar (only when stderr is a terminal).

    Returns:
        Features with float32 features and int64 labels on the CPU.
    """
    device = torch.device(device)
    autocast = _precision_context(device, precision)  # validate before any work
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
    name_of = _name_lookup(dataset)
    was_training = backbone.training
    backbone.to(device)
    backbone.eval()
    feature_chunks: list[Tensor] = []
    label_chunks: list[Tensor] = []
    names: list[str] | None = [] if name_of is not None else None
    num_failed = 0
    start = 0
    try:
        for images, labels, ok in _progress(loader, progress, desc="features"):
            ok = torch.as_tensor(ok, dtype=torch.bool)
            kept = ok.nonzero().flatten()
            num_failed += int(ok.numel() - kept.numel())
            if names is not None:
                names.extend(name_of(start + int(i)) for i in kept)
            start += int(ok.numel())
            if kept.numel() == 0:
                continue
            if kept.numel() < ok.numel():
                images, labels = images[kept], labels[kept]
            feature_chunks.append(_forward_pooled(backbone, images, device, channels_last, autocast))
            label_chunks.append(torch.as_tensor(labels, dtype=torch.int64).cpu())
    finally:
        backbone.train(was_training)
    features, labels_out = _concat(feature_chunks, label_chunks)
    return Features(features=features, labels=labels_out, names=names, num_failed=num_failed)


def source_features(
    backbone: nn.Module,
    source,
    transform,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
) -> Features:
    """Features of every decodable image of a labelled source, with the source's class names.

    Args:
        backbone: module returning (B, D) features (see `feature_extractor` for an intermediate layer).
        source: labelled `openseer.data.ImageSource` (``open_source(path, labelled=True)``).
        transform: evaluation transform (`openseer.eval.settings.ResolvedEval.transform`).
        batch_size, num_workers, device, precision, channels_last: see `extract_features`.

    Raises:
        DataError: no image of the source could be decoded.
    """
    feats = extract_features(
        backbone,
        LabelledDataset(source, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        precision=precision,
        channels_last=channels_last,
    )
    if len(feats) == 0:
        raise DataError(f"no decodable images in {source.root} ({feats.num_failed} failed)")
    feats.classes = list(source.classes)
    return feats


class PooledLayer(nn.Module):
    """Global-average-pooled output of one intermediate stage of a timm backbone.

    ``layer`` names a stage as timm's ``feature_info`` does (``"s3"`` for RegNet, ``"layer3"`` for ResNet)
    or gives its index in that list (``"2"``, ``"-1"``); the stage output (B, C, H, W) is averaged over
    H and W, as SEER and VISSL pool trunk stages for linear probes ("res4", "res5" in VISSL configs).
    The pooled head (``"pooled"``) needs no wrapper: it is the backbone's own ``forward``.
    """

    def __init__(self, backbone: nn.Module, layer: str) -> None:
        super().__init__()
        names = available_layers(backbone)[1:]
        if layer.lstrip("-").isdigit():
            index = int(layer)
            if not -len(names) <= index < len(names):
                raise ConfigError(f"layer index {layer} out of range; layers: {', '.join(names)}")
            index %= len(names)
        elif layer in names:
            index = names.index(layer)
        else:
            raise ConfigError(f"unknown layer {layer!r}; this backbone has: pooled, {', '.join(names)}")
        self.backbone = backbone
        self.index = index
        self.layer = names[index]

    def forward(self, x: Tensor) -> Tensor:
        (out,) = self.backbone.forward_intermediates(x, indices=[self.index], intermediates_only=True)
        return out.float().mean(dim=(2, 3)) if out.dim() == 4 else out.float().mean(dim=1)


def available_layers(backbone: nn.Module) -> list[str]:
    """Layer names accepted by :func:`feature_extractor`: ``"pooled"`` then the timm stage names."""
    info = getattr(backbone, "feature_info", None)
    if info is None or not hasattr(backbone, "forward_intermediates"):
        return ["pooled"]
    return ["pooled", *[f["module"] for f in info]]


def feature_extractor(backbone: nn.Module, layer: str = "pooled") -> nn.Module:
    """A module returning (B, D) features of ``layer`` (``"pooled"``: the backbone's global-pooled output)."""
    if layer in ("pooled", "", None):
        return backbone
    if len(available_layers(backbone)) == 1:
        raise ConfigError(f"layer {layer!r}: this backbone exposes no intermediate stages; use 'pooled'")
    return PooledLayer(backbone, str(layer))
