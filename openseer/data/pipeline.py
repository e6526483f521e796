"""Choosing and building the pretraining input pipeline from the config (what ``openseer.train`` calls).

Folders, single tars and file lists are random-access: an :class:`~openseer.data.loader.EpochSampler` over a
:class:`~openseer.data.loader.PretrainDataset`. Shard sets are streamed by
:class:`~openseer.data.stream.ShardStream`. With ``data.augment=fast`` both use
:class:`~openseer.data.fast.FastCropTransform` in the loader and
:class:`~openseer.data.fast.BatchColorAugment` on each batch (on the training device), seeded from
(seed, epoch, step) so resumption stays exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

from openseer.config import Config
from openseer.data.fast import BatchColorAugment, FastCropTransform
from openseer.data.lists import open_source
from openseer.data.loader import (
    BATCH_AUG_STREAM,
    EpochSampler,
    MultiCropBatch,
    PretrainDataset,
    auto_num_workers,
    build_pretrain_loader,
    mix_seed,
)
from openseer.data.shards import ShardSet, is_shard_spec
from openseer.data.stream import ShardStream
from openseer.data.transforms import MultiCropTransform
from openseer.errors import ConfigError

log = logging.getLogger("openseer")


class _BatchAugmented:
    """A folder loader whose batches get the fast path's batched colour augmentation, per (epoch, step)."""

    def __init__(self, loader: Any, sampler: EpochSampler, augment: Callable, seed: int, device) -> None:
        self.loader, self.sampler, self.augment = loader, sampler, augment
        self.seed, self.device = seed, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[MultiCropBatch]:
        epoch, step = self.sampler.epoch, self.sampler.start_step
        for batch in self.loader:
            batch = batch.to(self.device, non_blocking=True)
            gen = torch.Generator(device=batch.crops[0].device)
            gen.manual_seed(mix_seed(BATCH_AUG_STREAM, self.seed, epoch, step))
            batch.crops = self.augment(batch.crops, gen)
            step += 1
            yield batch


class _WithListingSkips:
    """Puts what listing the source passed over (unsafe tar members, the lost rest of a truncated tar, symlink
    loops) into the first batch of every pass, so that the trainer reports and counts them like skipped
    images (it counts each name once, so repeating them every epoch or after a resume changes nothing)."""

    def __init__(self, loader: Any, skipped: list[tuple[str, str]]) -> None:
        self.loader, self.skipped = loader, skipped

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[MultiCropBatch]:
        for k, batch in enumerate(self.loader):
            if k == 0:
                batch.skipped = [*self.skipped, *batch.skipped]
            yield batch


def build_pretrain_data(
    cfg: Config, rank: int, world_size: int, device: torch.device, resumed_from: dict | None = None
) -> tuple[Any, Any, int]:
    """(sampler, loader, images per epoch) for ``cfg.data``; ``sampler.set_epoch(epoch, step)`` positions
    the loader, and iterating the loader gives :class:`MultiCropBatch` es."""
    d, batch = cfg.data, cfg.train.batch_size
    fast = d.augment == "fast"
    transform = FastCropTransform(cfg.aug) if fast else MultiCropTransform(cfg.aug)
    batch_aug = BatchColorAugment(cfg.aug) if fast else None
    workers = auto_num_workers(d.num_workers)
    if is_shard_spec(d.path):
        if d.shuffle_buffer < 1:
            raise ConfigError(f"data.shuffle_buffer={d.shuffle_buffer} must be >= 1 (1: no shuffling)")
        stream = ShardStream(
            ShardSet(d.path),
            transform,
            batch,
            rank,
            world_size,
            workers,
            seed=cfg.train.seed,
            shuffle_buffer=d.shuffle_buffer,
            batch_transform=batch_aug,
            device=device if fast else None,
            pin_memory=device.type == "cuda",
        )
        if resumed_from and resumed_from.get("kind") == "shards":
            stream.input_counts = dict(resumed_from.get("input_counts", {}))  # counts cover the whole run
            layout = {k: stream.state()[k] for k in ("world_size", "workers", "shards", "samples")}
            changed = {k: (resumed_from.get(k), v) for k, v in layout.items() if resumed_from.get(k) != v}
            if changed:
                log.warning(
                    "the data layout changed since the checkpoint (%s): the rest of this epoch is a "
                    "different split of its shards, so some samples of it may repeat or be skipped",
                    ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()),
                )
        return stream, stream, stream.steps_per_epoch * batch * world_size
    source = open_source(d.path)
    dataset = PretrainDataset(source, transform, seed=cfg.train.seed, seeded=d.seed_augmentations)
    sampler = EpochSampler(len(source), batch, rank, world_size, cfg.train.seed)
    loader = build_pretrain_loader(dataset, sampler, batch, workers, pin_memory=device.type == "cuda")
    if fast:
        loader = _BatchAugmented(loader, sampler, batch_aug, cfg.train.seed, device)
    if source.skipped:
        loader = _WithListingSkips(loader, source.skipped)
    return sampler, loader, len(source)
