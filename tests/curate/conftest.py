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
    """A randomly initialised regnety_002 exported as an openseer run dir (no download)."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("model")
    spec = {"timm_name": "regnety_002"}
    export_backbone(run, create_backbone_from_spec(spec), spec)
    return run
