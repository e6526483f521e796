"""Fixtures of the curate tests: a tiny random RegNet exported as a run dir, pools of tiny structured images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openseer.checkpoint import export_backbone
from openseer.models.backbone import create_backbone_from_spec

SIZE = 32


def smooth_image(seed: int, size: int = SIZE) -> np.ndarray:
    """A seeded smooth random picture (a 4x4 colour field upsampled): distinct seeds look distinct."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return np.asarray(small.resize((size, size), Image.BICUBIC))


def save(arr: np.ndarray, path: Path, fmt: str = "PNG", quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    path.write_bytes(buf.getvalue())
    return path


def near_copy(arr: np.ndarray, seed: int) -> np.ndarray:
    """A slightly changed copy: +-3 grey levels of noise and a 1-pixel shift."""
    noise = np.random.default_rng(seed).integers(-3, 4, arr.shape)
    return np.clip(np.roll(arr, 1, axis=1).astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised regnety_002 exported as an openseer run dir (no download). timm zero-initialises
    each block's last batch-norm; with those at 1 the random features tell distinct pictures apart (cosine
    <= 0.97 on `smooth_image`s, >= 0.99 for a `near_copy`)."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("model")
    spec = {"timm_name": "regnety_002"}
    backbone = create_backbone_from_spec(spec)
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    export_backbone(run, backbone, spec)
    return run


@pytest.fixture()
def pool(tmp_path) -> dict[str, Path]:
    """A pool of 40 distinct pictures + 4 byte-identical copies + 4 near copies + 3 near copies of evaluation
    images + 1 undecodable file, and the evaluation set (3 images)."""
    root = tmp_path / "pool"
    for i in range(40):
        save(smooth_image(i), root / f"a/img{i:03d}.png")
    for i in range(4):
        (root / f"b/exact{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (root / f"b/exact{i}.png").write_bytes((root / f"a/img{i:03d}.png").read_bytes())
    for i in range(4, 8):
        save(near_copy(smooth_image(i), i), root / f"b/near{i}.png")
    for i in range(3):
        save(smooth_image(100 + i), tmp_path / "test" / f"t{i}.png")
        save(near_copy(smooth_image(100 + i), 7), root / f"c/leak{i}.png")
    (root / "c/broken.png").write_bytes(b"not an image")
    return {"pool": root, "test": tmp_path / "test"}
