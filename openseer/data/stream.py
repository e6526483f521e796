"""A deterministic, resumable multi-crop stream over tar shards, split across ranks and DataLoader workers.

Every process computes the same plan for an epoch from (seed, epoch) and the per-shard sample counts, without
reading data:

1. the shards are permuted; rank r takes shards ``order[r::world]``, and its worker w takes ``[w::workers]``
   of those, so no shard is read twice and none is skipped;
2. a worker reads its shards in order through a shuffle buffer of ``shuffle_buffer`` samples (WebDataset's
   in-memory shuffle). The buffer's choices are drawn from a generator seeded by (seed, epoch, rank, worker),
   so the order in which a worker emits its samples is a fixed permutation of its sequential positions,
   computed in a fraction of a second from the counts alone;
3. workers emit chunks of ``batch_size`` samples; the rank's stream is those chunks round-robin over the
   workers (worker 0's chunk 0, worker 1's chunk 0, ..., then chunk 1, ...); the main process re-orders what
   the DataLoader delivers into that order and cuts batches. An epoch is ``steps_per_epoch`` batches on every
   rank (the smallest a rank can get, so that ranks stay in step); the few samples beyond it are dropped for
   that epoch, like EpochSampler's remainder.

Resumption is therefore sample-exact at batch granularity: step k of epoch e continues with exactly the
samples, in the same order and with the same crops (each sample's augmentation is seeded from its global id),
as an uninterrupted run, provided the shard list, world size and worker count are unchanged
(:meth:`ShardStream.state` records them). A resumed worker skips whole shards whose samples were all consumed
and reads past consumed samples of the others without decoding them.

Undecodable images and samples lost to a truncated or missing shard keep their place in the stream: each is
replaced by the worker's previous good image, re-augmented with the lost sample's seed (a mid-grey image if
the worker has met no good image yet), and reported as ``(name, reason)`` in ``MultiCropBatch.skipped``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from openseer.data.images import BadImage, DataError, load_rgb
from openseer.data.loader import AUGMENT_STREAM, BATCH_AUG_STREAM, MultiCropBatch, mix_seed
from openseer.data.shards import ShardRecord, ShardSet, ShardStats, iter_shard

log = logging.getLogger("openseer")

_SHARD_ORDER_STREAM = 0x5_4A2D
_SHUFFLE_STREAM = 0x5_4FF1
#: A worker that has met this many samples and no decodable image stops the run: the data is not images.
MAX_BAD_START = 1000


def emission_order(n: int, buffer: int, seed: int) -> np.ndarray:
    """The order in which a shuffle buffer of ``buffer`` slots emits positions ``0..n-1`` read in order.

    The buffer fills up, then each newly read sample replaces a uniformly chosen one, which is emitted; at
    the end the rest is emitted in random order (webdataset's ``shuffle``, with a fixed initial fill).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    if buffer <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    size = min(buffer, n)
    slots = list(range(size))
    picks = rng.integers(0, size, n - size).tolist()
    out = np.empty(n, dtype=np.int64)
    for k, (p, j) in enumerate(zip(range(size, n), picks, strict=True)):
        out[k] = slots[j]
        slots[j] = p
    out[n - size :] = np.asarray(slots, dtype=np.int64)[rng.permutation(size)]
    return out


class _ChunkDataset(IterableDataset):
    """What runs inside a DataLoader worker: one worker's chunks of augmented samples for one epoch."""

    def __init__(self, stream: ShardStream, epoch: int, starts: list[int]) -> None:
        self.stream, self.epoch, self.starts = stream, epoch, starts

    def __iter__(self) -> Iterator[tuple[int, int, list[torch.Tensor], torch.Tensor, list]]:
        info = get_worker_info()
        workers = range(len(self.starts)) if info is None else [info.id]
        for w in workers:
            yield from self.stream._worker_chunks(self.epoch, w, self.starts[w])


class ShardStream:
    """Batches of multi-crop views streamed from tar shards (see the module docstring for the plan).

    Used like :class:`~openseer.data.loader.EpochSampler` and its loader together: call
    ``set_epoch(epoch, start_step)``, then iterate to get ``steps_per_epoch - start_step``
    :class:`MultiCropBatch` es whose ``indices`` are global sample ids (shard offset + position).

    Args:
        shards: the shard set (with counts).
        transform: PIL RGB image -> list of crop tensors (e.g. MultiCropTransform, or the fast path's
            geometric part, which returns uint8 crops).
        batch_size: samples per batch on this rank.
        rank, world_size: this process's place in data parallelism.
        num_workers: DataLoader worker processes (0: decode in the main process, planned as one worker).
        seed: seeds shard order, shuffle buffers and augmentations.
        shuffle_buffer: samples each worker holds (as raw bytes) to shuffle within and across its shards.
        batch_transform: optional ``(crops, generator) -> crops`` applied to each batch in the main process
            (the fast path's batched colour augmentation), seeded from (seed, epoch, step).
        device: where batch_transform runs (crops are moved there first); None keeps them on the CPU.
    """

    def __init__(
        self,
        shards: ShardSet,
        transform: Callable[[Image.Image], list[torch.Tensor]],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        batch_transform: Callable[[list[torch.Tensor], torch.Generator], list[torch.Tensor]] | None = None,
        device: torch.device | str | None = None,
        pin_memory: bool = False,
    ) -> None:
        if len(shards) < world_size:
            raise DataError(f"{len(shards)} shard(s) cannot feed {world_size} processes; write more shards")
        self.shards, self.transform, self.batch_size = shards, transform, batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.workers = max(1, num_workers)
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.batch_transform, self.device, self.pin_memory = batch_transform, device, pin_memory
        per_rank = len(shards) // world_size
        smallest = int(np.sort(shards.counts)[:per_rank].sum())  # the fewest samples any rank can get
        self.steps_per_epoch = smallest // batch_size
        if self.steps_per_epoch < 1:
            raise DataError(f"{shards} gives a rank as few as {smallest} samples, fewer than one batch of {batch_size}")
        self.epoch, self.start_step = 0, 0
        #: what the stream met so far, per reason: skips (empty, truncated, unreadable, non_image,
        #: too_large, shard_truncated, unsafe_member, ...) and conversions (cmyk, 16bit, palette, tiny, ...)
        self.input_counts: dict[str, int] = {}

    # ---- the plan ---------------------------------------------------------------------------------------
    def rank_shards(self, epoch: int) -> np.ndarray:
        """Indices (into ``shards.urls``) of this rank's shards for an epoch, in reading order."""
        gen = torch.Generator().manual_seed(mix_seed(_SHARD_ORDER_STREAM, self.seed, epoch))
        order = torch.randperm(len(self.shards), generator=gen).numpy()
        return order[self.rank :: self.world_size]

    def worker_shards(self, epoch: int, worker: int) -> np.ndarray:
        return self.rank_shards(epoch)[worker :: self.workers]

    def _worker_order(self, epoch: int, worker: int) -> np.ndarray:
        total = int(self.shards.counts[self.worker_shards(epoch, worker)].sum())
        seed = mix_seed(_SHUFFLE_STREAM, self.seed, epoch, self.rank, self.world_size, worker, self.workers)
        return emission_order(total, self.shuffle_buffer, seed)

    def _chunk_sequence(self, epoch: int) -> Iterator[tuple[int, int, int]]:
        """(worker, chunk index, chunk size) in the rank's round-robin order."""
        b = self.batch_size
        totals = [int(self.shards.counts[self.worker_shards(epoch, w)].sum()) for w in range(self.workers)]
        rounds = max(-(-t // b) for t in totals)
        for k in range(rounds):
            for w, t in enumerate(totals):
                if k * b < t:
                    yield w, k, min(b, t - k * b)

    def _resume_point(self, epoch: int, consumed: int) -> tuple[list[int], tuple[int, int]]:
        """Samples each worker already emitted when the rank has consumed ``consumed``, and the chunk to
        continue with."""
        starts = [0] * self.workers
        for w, k, size in self._chunk_sequence(epoch):
            if consumed < size:
                starts[w] = k * self.batch_size + consumed
                return starts, (w, k)
            starts[w] = k * self.batch_size + size
            consumed -= size
        return starts, (-1, -1)

    # ---- inside a worker -------------------------------------------------------------------------------
    def _positions(self, epoch: int, worker: int, when: np.ndarray, start: int, stats: ShardStats):
        """(position, record or reason) for this worker's positions in reading order; consumed ones are
        yielded as None without being read where a whole shard was consumed."""
        base = 0
        for s in self.worker_shards(epoch, worker):
            count, url = int(self.shards.counts[s]), self.shards.urls[s]
            if count == 0:
                continue
            if when[base : base + count].max() < start:  # every sample of this shard was already consumed
                for j in range(count):
                    yield base + j, None
                base += count
                continue
            before = dict(stats.counts)
            j = 0
            for record in iter_shard(url, stats):
                if j == count:
                    stats.add("extra_samples")
                    continue
                yield base + j, record
                j += 1
            new = {k: v - before.get(k, 0) for k, v in stats.counts.items() if v != before.get(k, 0)}
            reason = next((r for r in ("shard_unreadable", "shard_truncated") if r in new), "shard_short")
            for missing in range(j, count):
                yield base + missing, f"{url}#{missing}:{reason}"
            lost = ("shard_unreadable", "shard_truncated")
            self._shard_notes += [(f"{url}!{k}", k) for k in new if k not in lost]
            base += count

    def _worker_samples(self, epoch: int, worker: int, start: int) -> Iterator[tuple[int, object]]:
        """(global id, ShardRecord or "name:reason") in this worker's emission order, from ``start`` on."""
        order = self._worker_order(epoch, worker)
        when = np.empty_like(order)
        when[order] = np.arange(len(order))
        shard_ids = self.worker_shards(epoch, worker)
        counts = self.shards.counts[shard_ids]
        pos_base = np.concatenate([[0], np.cumsum(counts)])
        stats = ShardStats()
        reader = self._positions(epoch, worker, when, start, stats)
        store: dict[int, object] = {}
        for target in order[start:].tolist():
            while target not in store:
                p, item = next(reader)
                if when[p] >= start:
                    store[p] = item
            item = store.pop(target)
            s = int(np.searchsorted(pos_base, target, side="right") - 1)
            yield int(self.shards.offsets[shard_ids[s]] + target - pos_base[s]), item

    def _worker_chunks(self, epoch: int, worker: int, start: int):
        """(worker, chunk index, stacked crops, global ids, skipped, counts) per chunk of ``batch_size``."""
        b = self.batch_size
        self._shard_notes = []
        crops_acc: list[list[torch.Tensor]] = []
        ids: list[int] = []
        skipped: list[tuple[str, str]] = []
        conversions: dict[str, int] = {}
        last_good = Image.new("RGB", (64, 64), (128, 128, 128))  # used only before any good image
        seen, good = 0, 0
        chunk = start // b
        decode = getattr(self.transform, "decode", load_rgb)  # the fast path decodes JPEGs at reduced size
        aug = getattr(self.transform, "aug", None)
        tiny = aug.global_size if aug is not None else 0  # "tiny": smaller than a global crop (upscaled)
        for gid, item in self._worker_samples(epoch, worker, start):
            img, found = None, []
            if isinstance(item, ShardRecord):
                try:
                    img = decode(item.data, conversions=found)
                except BadImage as e:
                    non_image = e.reason == "unreadable" and e.detail.startswith("not a recognised")
                    skipped.append((f"{item.key}.{item.ext}", "non_image" if non_image else e.reason))
            elif item is not None:
                name, reason = str(item).rsplit(":", 1)
                skipped.append((name, reason))
            seen += 1
            if img is not None:
                last_good, good = img, good + 1
                found += ["tiny"] if min(img.size) < tiny else []
                for kind in found:
                    conversions[kind] = conversions.get(kind, 0) + 1
            elif good == 0 and seen >= MAX_BAD_START:
                raise DataError(f"the first {seen} samples of a worker's shards held no decodable image")
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(mix_seed(AUGMENT_STREAM, self.seed, epoch, gid))
                crops_acc.append(self.transform(last_good))
            ids.append(gid)
            if len(ids) == b - (start % b if chunk == start // b else 0):
                skipped += self._shard_notes
                self._shard_notes = []
                yield worker, chunk, _stack(crops_acc), torch.tensor(ids), skipped, conversions
                crops_acc, ids, skipped, conversions, chunk = [], [], [], {}, chunk + 1
        if ids:
            yield worker, chunk, _stack(crops_acc), torch.tensor(ids), skipped + self._shard_notes, conversions

    # ---- the main process ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step={start_step} must lie in [0, {self.steps_per_epoch}]")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def state(self) -> dict:
        """The stream position and layout, for the checkpoint (resuming needs the same layout)."""
        return {
            "kind": "shards",
            "epoch": self.epoch,
            "step_in_epoch": self.start_step,
            "samples_per_rank": self.start_step * self.batch_size,
            "granularity": "sample (batch boundary)",
            "world_size": self.world_size,
            "workers": self.workers,
            "shards": len(self.shards),
            "samples": self.shards.num_samples,
            "shuffle_buffer": self.shuffle_buffer,
            "input_counts": dict(self.input_counts),
        }

    def __iter__(self) -> Iterator[MultiCropBatch]:
        epoch, step, b = self.epoch, self.start_step, self.batch_size
        starts, first = self._resume_point(epoch, step * b)
        dataset = _ChunkDataset(self, epoch, starts)
        if self.num_workers > 0:
            chunks = iter(
                DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory)
            )
        else:
            chunks = iter(dataset)
        sequence = self._chunk_sequence(epoch)
        for w, k, _ in sequence:  # advance to the chunk we resume in
            if (w, k) == first:
                break
        expected = [first]
        waiting: dict[tuple[int, int], tuple] = {}
        pending: list[tuple] = []
        have = 0
        while step < self.steps_per_epoch:
            while have < b:
                key = expected.pop() if expected else next(sequence)[:2]
                while key not in waiting:
                    w, k, crops, ids, skipped, conversions = next(chunks)
                    waiting[(w, k)] = (crops, ids, skipped, conversions)
                    for reason, n in [*conversions.items(), *((r, 1) for _, r in skipped)]:
                        self.input_counts[reason] = self.input_counts.get(reason, 0) + n
                pending.append(waiting.pop(key))
                have += len(pending[-1][1])
            batch, pending, have = _cut(pending, b)
            if self.batch_transform is not None:
                if self.device is not None:
                    batch = batch.to(self.device, non_blocking=True)
                gen = torch.Generator(device=batch.crops[0].device)
                gen.manual_seed(mix_seed(BATCH_AUG_STREAM, self.seed, epoch, step))
                batch.crops = self.batch_transform(batch.crops, gen)
            step += 1
            self.start_step = step  # the position a checkpoint taken after this batch records
            yield batch


def _stack(per_sample: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack([crops[k] for crops in per_sample]) for k in range(len(per_sample[0]))]


def _cut(pending: list[tuple], b: int) -> tuple[MultiCropBatch, list[tuple], int]:
    """Concatenate chunks into one batch of ``b`` samples; return it and what is left over."""
    crops = [torch.cat([c[0][k] for c in pending]) for k in range(len(pending[0][0]))]
    ids = torch.cat([c[1] for c in pending])
    skipped = [s for c in pending for s in c[2]]
    conversions: dict[str, int] = {}  # a chunk's conversion counts go with the first batch that takes from it
    for c in pending:
        for kind, n in c[3].items():
            conversions[kind] = conversions.get(kind, 0) + n
    batch = MultiCropBatch([c[:b] for c in crops], ids[:b], skipped, conversions)
    if len(ids) == b:
        return batch, [], 0
    return batch, [([c[b:] for c in crops], ids[b:], [], {})], len(ids) - b
