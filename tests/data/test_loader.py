"""Sampler (sharding, epochs, resumption), pretraining dataset (bad images, seeded crops), batching."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from openseer.config import AugConfig
from openseer.data import loader as loader_module
from openseer.data.images import DataError
from openseer.data.lists import open_source
from openseer.data.loader import (
    EpochSampler,
    LabelledDataset,
    MultiCropBatch,
    PretrainDataset,
    auto_num_workers,
    build_pretrain_loader,
    collate_multicrop,
)
from openseer.data.transforms import MultiCropTransform, eval_transform
from tests.helpers import png_bytes

TINY_AUG = AugConfig(global_crops=2, global_size=16, local_crops=2, local_size=8)


def png(seed: int, size: int = 20) -> bytes:
    return png_bytes(seed, size)


def image_folder(root: Path, n: int, bad: dict[int, bytes] | None = None, classes: int = 0) -> Path:
    """``n`` images named so that index i is file i; ``bad`` replaces some files' bytes."""
    bad = bad or {}
    for i in range(n):
        folder = root / f"c{i % classes}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(bad.get(i, png(i)))
    return root


# ---- sampler ---------------------------------------------------------------------------------------------


def test_sampler_ranks_are_disjoint_and_cover_all_but_the_remainder():
    shares = []
    for rank in range(2):
        sampler = EpochSampler(103, batch_size=5, rank=rank, world_size=2, seed=1)
        sampler.set_epoch(4)
        keys = list(sampler)
        assert len(keys) == len(sampler) == sampler.steps_per_epoch * 5 == 50
        assert {epoch for epoch, _ in keys} == {4}
        shares.append([index for _, index in keys])
    union = shares[0] + shares[1]
    assert len(set(union)) == 100 and set(union) <= set(range(103))
    assert not set(shares[0]) & set(shares[1])


def test_sampler_epochs_and_seeds_permute_differently():
    def order(seed: int, epoch: int) -> list[int]:
        sampler = EpochSampler(64, batch_size=8, seed=seed)
        sampler.set_epoch(epoch)
        return [index for _, index in sampler]

    assert order(0, 0) == order(0, 0)
    assert sorted(order(0, 0)) == list(range(64))
    assert len({tuple(order(0, e)) for e in range(4)} | {tuple(order(1, 0))}) == 5
    assert order(0, 1) != order(1, 0)  # (seed, epoch) is hashed, not added


def test_sampler_resumes_mid_epoch_exactly():
    full_sampler = EpochSampler(50, batch_size=4, rank=1, world_size=3, seed=5)
    full_sampler.set_epoch(2)
    full = list(full_sampler)
    resumed = EpochSampler(50, batch_size=4, rank=1, world_size=3, seed=5)
    resumed.set_epoch(2, start_step=3)
    assert len(resumed) == len(full) - 12
    assert full[:12] + list(resumed) == full
    with pytest.raises(ValueError, match="start_step"):
        resumed.set_epoch(2, start_step=resumed.steps_per_epoch + 1)
    with pytest.raises(DataError, match="fewer than one global batch"):
        EpochSampler(7, batch_size=4, world_size=2)


# ---- dataset ---------------------------------------------------------------------------------------------


def test_bad_images_are_substituted_and_reported(tmp_path):
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(jpeg, "JPEG")
    bad = {1: b"", 2: jpeg.getvalue()[:200], 5: b"not an image"}
    source = open_source(image_folder(tmp_path, 6, bad))
    dataset = PretrainDataset(source, MultiCropTransform(TINY_AUG), seed=0)
    crops, index, skipped, conversions = dataset[(0, 1)]
    assert index == 3 and skipped == [("001.png", "empty"), ("002.png", "truncated")]
    assert len(crops) == 4
    assert dataset[(0, 5)][1:] == (0, [("005.png", "unreadable")], [])  # wraps around to index 0
    assert dataset[0][1:] == (0, [], [])
    all_bad = open_source(image_folder(tmp_path / "bad", 3, {0: b"", 1: b"", 2: b"x"}))
    with pytest.raises(DataError, match="3 consecutive images"):
        PretrainDataset(all_bad, MultiCropTransform(TINY_AUG))[0]


def test_seeded_crops_depend_only_on_the_key(tmp_path):
    dataset = PretrainDataset(open_source(image_folder(tmp_path, 6)), MultiCropTransform(TINY_AUG), seed=3)
    a5, a2 = dataset[(1, 5)][0], dataset[(1, 2)][0]
    b2, b5 = dataset[(1, 2)][0], dataset[(1, 5)][0]
    assert all(torch.equal(x, y) for x, y in zip(a5 + a2, b5 + b2, strict=True))
    assert not torch.equal(dataset[(2, 5)][0][0], a5[0])  # another epoch, other crops
    assert not torch.equal(PretrainDataset(dataset.source, dataset.transform, seed=4)[(1, 5)][0][0], a5[0])
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    dataset[(1, 5)]
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is untouched
    unseeded = PretrainDataset(dataset.source, dataset.transform, seeded=False)
    assert not torch.equal(unseeded[(1, 5)][0][0], unseeded[(1, 5)][0][0])


def test_loader_batches_identical_across_workers_and_resumption(tmp_path):
    dataset = PretrainDataset(open_source(image_folder(tmp_path, 12)), MultiCropTransform(TINY_AUG), seed=1)

    def batches(workers: int, start_step: int = 0) -> list[MultiCropBatch]:
        sampler = EpochSampler(len(dataset), batch_size=3, seed=1)
        sampler.set_epoch(1, start_step=start_step)
        return list(build_pretrain_loader(dataset, sampler, batch_size=3, num_workers=workers))

    serial, parallel, resumed = batches(0), batches(2), batches(0, start_step=2)
    assert len(serial) == len(parallel) == 4 and len(resumed) == 2
    for x, y in zip(serial, parallel, strict=True):
        assert torch.equal(x.indices, y.indices)
        assert all(torch.equal(a, b) for a, b in zip(x.crops, y.crops, strict=True))
    for x, y in zip(serial[2:], resumed, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(x.crops, y.crops, strict=True))


def test_collate_multicrop_shapes():
    items = [
        (
            [torch.full((3, 16, 16), float(i)), torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)],
            i,
            [("x.jpg", "empty")] * i,
            ["cmyk"] * (i % 2),
        )
        for i in range(4)
    ]
    batch = collate_multicrop(items)
    assert [tuple(c.shape) for c in batch.crops] == [(4, 3, 16, 16), (4, 3, 8, 8), (4, 3, 8, 8)]
    assert batch.conversions == {"cmyk": 2}
    assert batch.indices.tolist() == [0, 1, 2, 3] and batch.indices.dtype == torch.long
    assert batch.crops[0][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert len(batch.skipped) == 6
    assert batch.to("cpu").crops[1].shape == (4, 3, 8, 8)


def test_labelled_dataset_marks_bad_images(tmp_path):
    source = open_source(image_folder(tmp_path, 4, {2: b""}, classes=2), labelled=True)
    dataset = LabelledDataset(source, eval_transform(12, 1.0, (0.5,) * 3, (0.5,) * 3))
    names = [source.name(i) for i in range(4)]
    assert names == ["c0/000.png", "c0/002.png", "c1/001.png", "c1/003.png"]
    image, label, ok = dataset[1]
    assert ok is False and label == 0 and tuple(image.shape) == (3, 12, 12) and not image.any()
    image, label, ok = dataset[2]
    assert ok is True and label == 1 and tuple(image.shape) == (3, 12, 12) and image.any()
    explicit = LabelledDataset(source, dataset.transform, image_size=12)
    assert tuple(explicit[1][0].shape) == (3, 12, 12)


def test_auto_num_workers(monkeypatch):
    assert auto_num_workers(3) == 3 and auto_num_workers(0) == 0
    for cores, expected in ((1, 0), (2, 0), (4, 3), (32, 8)):
        monkeypatch.setattr(loader_module, "available_cores", lambda c=cores: c)
        assert auto_num_workers(-1) == expected
    with pytest.raises(ValueError):
        auto_num_workers(-2)
