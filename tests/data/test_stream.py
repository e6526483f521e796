"""The shard stream: split over ranks x workers, reshuffled per epoch, resumed exactly, robust input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openseer.checkpoint import load_checkpoint
from openseer.config import AugConfig, load_config
from openseer.data.shards import ShardSet
from openseer.data.stream import ShardStream, emission_order
from openseer.data.transforms import MultiCropTransform
from openseer.train import pretrain
from tests.helpers import TINY_OVERRIDES, png_bytes, write_tar

TINY_AUG = AugConfig(global_crops=1, global_size=8, local_crops=1, local_size=4, blur_prob=0.0)


def png(seed: int, size: int = 10) -> bytes:
    return png_bytes(seed, size)


def shard_set(root: Path, counts: list[int]) -> ShardSet:
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    for s, count in enumerate(counts):
        write_tar(root / f"s-{s:03d}.tar", [(f"{n + j:05d}.png", png(n + j)) for j in range(count)])
        n += count
    return ShardSet(f"{root}/s-*.tar")


def run(shards: ShardSet, rank=0, world=1, workers=0, epoch=0, start=0, batch=4, buffer=5, aug=TINY_AUG):
    stream = ShardStream(shards, MultiCropTransform(aug), batch, rank, world, workers, seed=7, shuffle_buffer=buffer)
    stream.set_epoch(epoch, start)
    batches = list(stream)
    assert len(batches) == stream.steps_per_epoch - start
    return batches, stream


def ids(batches) -> list[int]:
    return torch.cat([b.indices for b in batches]).tolist()


def test_emission_order_is_a_seeded_permutation():
    order = emission_order(50, 8, seed=1)
    assert sorted(order.tolist()) == list(range(50))
    assert order.tolist() == emission_order(50, 8, seed=1).tolist() != emission_order(50, 8, seed=2).tolist()
    assert emission_order(10, 1, seed=1).tolist() == list(range(10))  # buffer 1: no shuffling
    assert max(order[k] - k for k in range(50)) <= 8  # never emits what was not read yet


def test_two_ranks_two_workers_cover_every_sample_once(tmp_path):
    shards = shard_set(tmp_path, [6] * 8)
    shares = [ids(run(shards, rank, 2, workers=2, epoch=3)[0]) for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == 24
    assert sorted(shares[0] + shares[1]) == list(range(48))  # no duplicates, no gaps
    # another epoch: the same samples in another order; the same epoch again: the same order
    again = ids(run(shards, 0, 2, workers=2, epoch=3)[0])
    other = ids(run(shards, 0, 2, workers=2, epoch=4)[0]) + ids(run(shards, 1, 2, workers=2, epoch=4)[0])
    assert again == shares[0] and sorted(other) == list(range(48)) and other[:24] != shares[0]


def test_uneven_shards_keep_ranks_in_step(tmp_path):
    shards = shard_set(tmp_path, [7, 3, 5, 6, 2])
    got = [ids(run(shards, rank, 2, workers=0, epoch=1)[0]) for rank in range(2)]
    assert len(got[0]) == len(got[1]) == 4  # the smallest share (2 + 3 samples) -> 1 batch of 4 per rank
    assert len(set(got[0] + got[1])) == 8


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_exactly(tmp_path, workers):
    shards = shard_set(tmp_path, [5, 6, 7, 6])
    full, _ = run(shards, workers=workers, epoch=2, batch=3)
    for start in (1, 3, len(full) - 1):
        resumed, stream = run(shards, workers=workers, epoch=2, start=start, batch=3)
        assert ids(resumed) == ids(full[start:])
        for a, b in zip(resumed, full[start:], strict=True):  # the very same crops
            for x, y in zip(a.crops, b.crops, strict=True):
                assert torch.equal(x, y)
        assert stream.state()["step_in_epoch"] == len(full)


def _bad_corpus(tmp_path: Path) -> list[tuple[str, bytes]]:
    def encode(img: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    jpeg = encode(rgb, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (12, 12), (100 * i, 50, 0)) for i in range(3)]
    return [
        ("a_empty.png", b""),
        ("b_truncated.jpg", jpeg[: len(jpeg) // 2]),
        ("c_corrupt.png", png(1)[:40] + b"\x00" * 60 + png(1)[100:]),
        ("d_text.jpg", b"this is not an image at all " * 10),
        ("e_cmyk.jpg", encode(rgb.convert("CMYK"), "JPEG")),
        ("f_16bit.png", encode(Image.fromarray(np.full((12, 12), 40000, dtype=np.uint16)), "PNG")),
        ("g_palette.png", encode(rgb.convert("P"), "PNG")),
        ("h_animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:])),
        ("i_exif.jpg", encode(rgb, "JPEG", exif=exif)),
        ("j_tiny.png", encode(Image.new("RGB", (2, 2), (9, 9, 9)), "PNG")),
        ("k_bomb.png", encode(Image.new("RGB", (120, 120)), "PNG")),
        ("l_good.png", png(3)),
    ]


def test_bad_input_is_replaced_and_counted_per_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 120 x 120 is then a decompression bomb
    write_tar(tmp_path / "s-000.tar", _bad_corpus(tmp_path))
    raw = write_tar(tmp_path / "s-001.tar", [(f"m{i}.png", png(10 + i)) for i in range(4)]).read_bytes()
    manifest = {"shards": [{"name": "s-000.tar", "count": 12}, {"name": "s-001.tar", "count": 4}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "s-001.tar").write_bytes(raw[:1500])  # cut short after the first member
    aug = AugConfig(global_crops=1, global_size=16, local_crops=0, blur_prob=0.0)
    batches, stream = run(ShardSet(tmp_path), batch=4, buffer=1, aug=aug)
    assert sorted(ids(batches)) == list(range(16))  # every position keeps its place
    skipped = dict(s for b in batches for s in b.skipped)
    assert skipped["a_empty.png"] == "empty" and skipped["b_truncated.jpg"] == "truncated"
    assert skipped["c_corrupt.png"] in ("unreadable", "truncated", "non_image")
    assert skipped["d_text.jpg"] == "non_image"
    assert skipped["k_bomb.png"] == "too_large"
    assert sum(r == "shard_truncated" for r in skipped.values()) == 3
    counts = stream.input_counts
    for reason in ("cmyk", "16bit", "palette", "animated", "exif_rotated", "tiny", "empty", "non_image"):
        assert counts.get(reason, 0) >= 1, (reason, counts)
    assert counts["too_large"] == 1 and counts["shard_truncated"] == 3
    assert stream.state()["input_counts"] == counts
    for batch in batches:
        assert torch.isfinite(batch.crops[0]).all() and batch.crops[0].shape[1:] == (3, 16, 16)


def test_pretraining_streams_shards_and_records_the_position(tmp_path):
    """End to end through openseer.train: interrupted mid-epoch, the checkpoint holds the stream position and
    the resumed run finishes the epoch (exactness of the continuation is tested on the stream above)."""
    shard_set(tmp_path / "sh", [8, 8, 8])
    extra = ["train.epochs=1", "data.shuffle_buffer=4", "aug.global_size=16", "aug.local_size=8"]
    cfg = load_config("demo", [*TINY_OVERRIDES, f"data.path={tmp_path}/sh/s-*.tar", *extra])

    def interrupt(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    assert pretrain(cfg, tmp_path / "run", on_step=interrupt)["steps"] == 2
    state = load_checkpoint(tmp_path / "run/checkpoints/last.pt")["data"]
    assert state["kind"] == "shards" and (state["epoch"], state["step_in_epoch"]) == (0, 2)
    assert state["samples_per_rank"] == 16 and state["shards"] == 3
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 3
