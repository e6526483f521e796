"""Sampling, decoding and batching for pretraining and evaluation.

Resumption is exact by construction: :class:`EpochSampler` derives each epoch's order from (seed, epoch)
alone and can start part-way through an epoch, and :class:`PretrainDataset` seeds each sample's
augmentation from (seed, epoch, index), so a run resumed at step k sees the same images with the same
crops as an uninterrupted one, whatever the number of workers (the property dino and SwAV lack: their
crops depend on worker seeding and on how far the iterator had run).

Bad files never stop a run: a sample that cannot be decoded is replaced by the next index and reported in
the batch (``MultiCropBatch.skipped``) so the trainer can count and log it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from openseer.data.images import BadImage, DataError, load_rgb
from openseer.data.sources import ImageSource
from openseer.errors import ConfigError

#: How many consecutive undecodable images a sample may skip before the data is declared broken.
MAX_SKIPS = 50

_MASK64 = (1 << 64) - 1
_ORDER_STREAM = 0x5EED_0D0E  # separates the sample-order seeds from the augmentation seeds
#: Seed streams of `mix_seed`: per-sample augmentation (PIL path), per-batch augmentation (fast path, batched).
AUGMENT_STREAM = 0xA06_C0DE
BATCH_AUG_STREAM = 0xBA7C4

#: One sample of :class:`PretrainDataset`: (crops, index of the image used, skipped (name, reason) pairs,
#: conversions the image used needed).
Sample = tuple[list[torch.Tensor], int, list[tuple[str, str]], list[str]]


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 (Steele et al. 2014): a fast, well-mixing 64-bit bijection."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value and their order (not Python's salted ``hash``)."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` keys: this rank's share of a seeded per-epoch permutation.

    Every rank gets exactly ``steps_per_epoch * batch_size`` keys per epoch (the remainder that does not
    fill a global batch is dropped), the ranks' shares are disjoint, and ``set_epoch(e, start_step=k)``
    skips the first ``k`` batches of this rank's share to resume mid-epoch.
    """

    def __init__(self, dataset_size: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size > 0 and 0 <= rank < world_size; got {batch_size}, {rank}, {world_size}")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.steps_per_epoch = dataset_size // (batch_size * world_size)
        if self.steps_per_epoch < 1:
            raise DataError(
                f"the dataset has {dataset_size} images, fewer than one global batch of "
                f"{batch_size * world_size} ({batch_size} per process x {world_size} processes)"
            )
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Choose the epoch to iterate next and how many of its steps were already done."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step={start_step} must lie in [0, {self.steps_per_epoch}]")
        self.epoch = epoch
        self.start_step = start_step

    def indices(self) -> torch.Tensor:
        """This rank's remaining indices for the current epoch, in order."""
        generator = torch.Generator().manual_seed(mix_seed(_ORDER_STREAM, self.seed, self.epoch))
        order = torch.randperm(self.dataset_size, generator=generator)
        order = order[: self.steps_per_epoch * self.batch_size * self.world_size]
        return order[self.rank :: self.world_size][self.start_step * self.batch_size :]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self.indices().tolist():
            yield epoch, index

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.batch_size


def _decode(source: ImageSource, i: int, decode: Callable[[bytes], Image.Image] = load_rgb) -> Image.Image:
    """Read and decode image ``i``; a file that vanished or cannot be read is a BadImage too."""
    try:
        data = source.read(i)
    except OSError as e:
        raise BadImage("unreadable", f"cannot read file ({e.strerror or e})") from None
    return decode(data)


class PretrainDataset(Dataset):
    """Decoded, augmented images keyed by ``(epoch, index)`` (a plain int means epoch 0).

    An image that cannot be decoded is replaced by the next one, ``(i + 1) % len``, up to
    :data:`MAX_SKIPS` tries, and reported as ``(name, reason)``. When ``seeded``, the transform runs with
    torch's CPU generator seeded from (seed, epoch, index) and restored afterwards, so the crops of a key do
    not depend on worker count, order or resumption, and the caller's random stream is untouched.

    ``__getitem__`` returns a :data:`Sample` ``(crops, index, skipped, conversions)`` where ``index`` is the image
    actually used (the key's index unless it was substituted) and ``conversions`` what it needed converted (CMYK,
    16-bit, EXIF rotation, ...); the seed always comes from the key's index.
    """

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[Image.Image], list[torch.Tensor]],
        seed: int = 0,
        seeded: bool = True,
    ) -> None:
        self.source = source
        self.transform = transform
        self.seed = seed
        self.seeded = seeded

    def __len__(self) -> int:
        return len(self.source)

    def sample_seed(self, epoch: int, index: int) -> int:
        """The augmentation seed of one key."""
        return mix_seed(AUGMENT_STREAM, self.seed, epoch, index)

    def _first_good(self, index: int) -> tuple[Image.Image, int, list[tuple[str, str]], list[str]]:
        n = len(self.source)
        skipped: list[tuple[str, str]] = []
        # a transform may bring its own decoder (the fast path decodes JPEGs at reduced size)
        decoder = getattr(self.transform, "decode", load_rgb)
        for step in range(min(MAX_SKIPS, n)):
            i = (index + step) % n
            conversions: list[str] = []  # CMYK, 16-bit, EXIF rotation, ...: counted by the loop
            try:
                img = _decode(self.source, i, functools.partial(decoder, conversions=conversions))
                return img, i, skipped, conversions
            except BadImage as e:
                skipped.append((self.source.name(i), e.reason))
        reasons = ", ".join(sorted({reason for _, reason in skipped}))
        raise DataError(
            f"{len(skipped)} consecutive images from {self.source.name(index)!r} in {self.source.root} could "
            f"not be decoded ({reasons}); is this really a collection of images?"
        )

    def __getitem__(self, key: tuple[int, int] | int) -> Sample:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (0, int(key))
        img, used, skipped, conversions = self._first_good(index)
        if not self.seeded:
            return self.transform(img), used, skipped, conversions
        # fork_rng(devices=[]) saves and restores only the CPU generator; seeding the default CPU generator
        # directly (not torch.manual_seed) leaves any CUDA generator alone as well.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.sample_seed(epoch, index))
            crops = self.transform(img)
        return crops, used, skipped, conversions


@dataclass
class MultiCropBatch:
    """A batch of multi-crop views.

    Attributes:
        crops: one ``(B, 3, h, w)`` tensor per crop position (global crops first).
        indices: ``(B,)`` source indices of the images used.
        skipped: ``(name, reason)`` of every undecodable image met while building the batch.
        conversions: how many of its images needed each conversion (``cmyk``, ``16bit``, ``exif_rotated``, ...).
    """

    crops: list[torch.Tensor]
    indices: torch.Tensor
    skipped: list[tuple[str, str]]
    conversions: dict[str, int] = field(default_factory=dict)

    def pin_memory(self) -> MultiCropBatch:
        """Called by DataLoader(pin_memory=True) on the batches it produces."""
        pinned = [c.pin_memory() for c in self.crops]
        return MultiCropBatch(pinned, self.indices.pin_memory(), self.skipped, self.conversions)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MultiCropBatch:
        """The batch with its tensors on ``device``."""
        crops = [c.to(device, non_blocking=non_blocking) for c in self.crops]
        indices = self.indices.to(device, non_blocking=non_blocking)
        return MultiCropBatch(crops, indices, self.skipped, self.conversions)


def collate_multicrop(items: Sequence[Sample]) -> MultiCropBatch:
    """Stack :class:`PretrainDataset` samples into a :class:`MultiCropBatch`."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    num_crops = len(items[0][0])
    crops = [torch.stack([item[0][k] for item in items]) for k in range(num_crops)]
    indices = torch.tensor([item[1] for item in items], dtype=torch.long)
    skipped = [entry for item in items for entry in item[2]]
    conversions: dict[str, int] = {}
    for item in items:
        for kind in item[3]:
            conversions[kind] = conversions.get(kind, 0) + 1
    return MultiCropBatch(crops, indices, skipped, conversions)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_num_workers(requested: int) -> int:
    """DataLoader workers: ``requested`` when >= 0; for -1, 0 on <= 2 cores, else min(8, cores - 1).

    Worker processes compete with torch's intra-op threads for the same cores. On a 2-core machine that
    costs more than it gains (0 workers were measured faster than 2: decoding tiny images between steps is
    cheaper than the contention and the inter-process copies); with more cores one core is left to the main
    process, and more than 8 workers rarely helps a single accelerator.
    """
    if requested >= 0:
        return requested
    if requested != -1:
        raise ConfigError(f"num_workers={requested}; expected -1 (automatic) or a count >= 0")
    cores = available_cores()
    return 0 if cores <= 2 else min(8, cores - 1)


def build_pretrain_loader(
    dataset: PretrainDataset,
    sampler: EpochSampler,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of :class:`MultiCropBatch` driven by an :class:`EpochSampler`.

    The sampler runs in the main process, so ``sampler.set_epoch`` takes effect at the next ``iter(loader)``
    even with persistent workers. The sampler already yields whole batches, hence ``drop_last=False``.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_multicrop,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=num_workers > 0,
    )


class LabelledDataset(Dataset):
    """``(image tensor, label, ok)`` for evaluation; an undecodable image gives zeros and ``ok=False``.

    The zero tensor needs the transform's output shape: pass ``image_size`` for a ``(3, s, s)`` output, or
    leave it None to probe the transform once on a blank image (under a forked RNG, so a random
    transform does not disturb the caller's stream).
    """

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[Image.Image], torch.Tensor],
        image_size: int | None = None,
    ) -> None:
        self.source = source
        self.transform = transform
        if image_size is not None:
            self._blank = torch.zeros(3, image_size, image_size)
        else:
            with torch.random.fork_rng(devices=[]):
                self._blank = torch.zeros_like(transform(Image.new("RGB", (256, 256))))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        label = self.source.label(i)
        try:
            img = _decode(self.source, i)
        except BadImage:
            return self._blank.clone(), label, False
        return self.transform(img), label, True
