"""Small shared fixtures for tests: synthetic image folders, PNG bytes and tars."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from openseer.methods.base import RunInfo, StepContext


def png_bytes(seed: int, size: int) -> bytes:
    """A seeded random ``size`` x ``size`` RGB PNG, encoded."""
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A plain tar of regular files ``(name, bytes)``, in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_images(root: Path, n: int, size: int = 24, classes: int = 0, seed: int = 0) -> Path:
    """Write ``n`` random-but-structured RGB PNGs; with ``classes`` they go to ``<class>/`` folders.

    Each class has its own dominant colour, so features can separate them.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = i % classes if classes else 0
        base = np.zeros((size, size, 3), dtype=np.float64)
        base[..., label % 3] = 160 + 40 * (label // 3)
        img = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
        folder = root / f"class{label}" if classes else root / f"sub{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


TINY_OVERRIDES = [
    "aug.global_size=24",
    "aug.local_crops=2",
    "aug.local_size=16",
    "model.backbone=regnetx_002",
    "swav.hidden_dims=[32]",
    "swav.output_dim=16",
    "swav.num_prototypes=10",
    "train.batch_size=8",
    "train.log_every=1",
    "optim.warmup_epochs=0.5",
    "model.channels_last=false",
    "data.num_workers=0",
]


# DINO's own teacher-temperature warm-up (0.04 -> 0.07 over 2 epochs) and last-layer freeze (1 epoch), for tests
# that check those schedules: the short presets keep 0.02 throughout and freeze nothing
DINO_PAPER_SCHEDULE = [
    "dino.warmup_teacher_temp=0.04",
    "dino.teacher_temp=0.07",
    "dino.warmup_teacher_temp_epochs=2",
    "dino.norm_last_layer=true",
    "dino.freeze_last_layer_epochs=1",
]


def tiny_run_with_labels(root: Path, *pretrain_args: str, train_images: int = 24) -> tuple[Path, Path, Path]:
    """A 3-class labelled train/test pair and a tiny `demo` run pretrained on unlabelled images (3 steps):
    (run_dir, train, test). Extra ``pretrain_args`` go on the pretrain command line."""
    from openseer.cli import main

    unlabelled = write_images(root / "unlabelled", 16, size=24)
    train = write_images(root / "train", train_images, size=16, classes=3)
    test = write_images(root / "test", 9, size=16, classes=3, seed=1)
    run_dir = root / "run"
    argv = ["pretrain", "demo", *TINY_OVERRIDES, "--data", str(unlabelled), "--out", str(run_dir), "--max-steps", "3"]
    assert main([*argv, *pretrain_args]) == 0
    return run_dir, train, test


def run_info(global_batch: int, world_size: int = 1, accumulate: int = 1):
    """The RunInfo a method is built with, for tests that build one by hand (one step per epoch)."""
    return RunInfo(global_batch, global_batch // world_size // accumulate, world_size, accumulate, 1, 1)


def step_ctx(epoch: int = 0, info=None, step: int = 0):
    """The StepContext the loop passes to a method's forward and hooks."""
    return StepContext(step=step, epoch=epoch, info=info or run_info(1))
