"""Tar shards streamed by 2 real gloo processes x 2 DataLoader workers: every sample once per epoch."""

from __future__ import annotations

import pytest
import torch

SHARD_COUNTS = [6] * 8  # 48 samples: 24 per rank, 3 batches of 8


def stream_ids(rank: int, world: int, shard_dir: str) -> dict:
    """Sample ids this rank's stream yields in epochs 0 and 1, with its rank and world from torch.distributed."""
    from openseer import dist
    from openseer.data.shards import ShardSet
    from openseer.data.stream import ShardStream
    from openseer.data.transforms import MultiCropTransform
    from tests.data.test_stream import TINY_AUG

    stream = ShardStream(
        ShardSet(f"{shard_dir}/s-*.tar"),
        MultiCropTransform(TINY_AUG),
        8,
        dist.rank(),
        dist.world_size(),
        2,
        seed=7,
        shuffle_buffer=5,
    )
    out = {}
    for epoch in (0, 1):
        stream.set_epoch(epoch, 0)
        out[epoch] = torch.cat([b.indices for b in stream]).tolist()
    return out


@pytest.mark.dist
def test_two_processes_two_workers_read_every_sample_once_per_epoch(two_process_results):
    shares = [r["stream"] for r in two_process_results]
    for epoch in (0, 1):
        a, b = shares[0][epoch], shares[1][epoch]
        assert len(a) == len(b) == 24
        assert sorted(a + b) == list(range(48)), f"epoch {epoch}: duplicates or gaps"
    assert shares[0][0] != shares[0][1]  # reshuffled between epochs
