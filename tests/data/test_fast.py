"""The fast multi-crop path: same geometry as the reference, batched colour ops against torchvision's, and
the same distribution of crop statistics as SwAV's reference pipeline."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from openseer.config import AugConfig, load_config
from openseer.data.fast import (
    BatchColorAugment,
    FastCropTransform,
    _adjust_hue,
    _blend,
    _gaussian_blur,
    _gray,
)
from openseer.data.pipeline import build_pretrain_data
from openseer.data.transforms import MultiCropTransform
from tests.helpers import TINY_OVERRIDES, write_images

OFF = dict(flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)


def photo(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus texture: crops differ in mean and contrast, like real photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([200 * x + 30, 180 * y + 40, 120 * (1 - x) * y + 60], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8))


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_draft_decoding_only_where_every_crop_keeps_its_resolution():
    swav = FastCropTransform(AugConfig())  # 224 px crops of scale >= 0.14 and 96 px crops of scale >= 0.05
    assert swav.draft_size(500, 375) == (500, 375)  # no reduction for ~500 px images
    w, h = swav.draft_size(4000, 3000)
    assert (w, h) == (1000, 750)  # 1/4: the smallest 96 px crop box then still spans >= 96 px
    assert FastCropTransform(AugConfig(global_size=32, local_size=16)).draft_size(32, 32) == (32, 32)
    img = swav.decode(jpeg(photo(2000, 1500)))
    assert img.size == (1000, 750) and img.mode == "RGB"
    assert FastCropTransform(AugConfig(), draft=False).decode(jpeg(photo(2000, 1500))).size == (2000, 1500)


@pytest.mark.parametrize(
    ("crop", "interpolation"), [("global", "bilinear"), ("local", "bilinear"), ("global", "bicubic")]
)
def test_fast_geometry_equals_the_reference_crop(crop, interpolation):
    aug = AugConfig(global_size=24, local_size=12, global_crops=1, local_crops=0, interpolation=interpolation, **OFF)
    if crop == "local":
        aug = replace(aug, global_size=12, global_scale=aug.local_scale)
    img = photo()
    for seed in range(5):
        torch.manual_seed(seed)
        ref = MultiCropTransform(aug)(img)[0]
        torch.manual_seed(seed)
        raw = FastCropTransform(aug)(img)[0]
        fast = BatchColorAugment(aug)([raw[None]], torch.Generator().manual_seed(0))[0][0]
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


def test_batched_colour_ops_match_torchvision():
    # contrast and saturation use PIL's grey (0.299 R), torchvision's tensor ops 0.2989 R: atol 1e-4
    x = torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    f = torch.tensor([0.3, 0.9, 1.4, 1.8]).view(-1, 1, 1, 1)
    for k in range(4):
        torch.testing.assert_close(
            _blend(x[k : k + 1], _gray(x[k : k + 1]).mean((1, 2, 3), keepdim=True), f[k]),
            F.adjust_contrast(x[k : k + 1], float(f[k])),
            rtol=0,
            atol=1e-4,
        )
        torch.testing.assert_close(
            _blend(x[k : k + 1], _gray(x[k : k + 1]), f[k]),
            F.adjust_saturation(x[k : k + 1], float(f[k])),
            rtol=0,
            atol=1e-4,
        )
    shifts = torch.tensor([-0.15, -0.02, 0.05, 0.16])
    hue = _adjust_hue(x, shifts)
    for k in range(4):
        torch.testing.assert_close(hue[k], F.adjust_hue(x[k], float(shifts[k])), rtol=0, atol=1e-5)
    blurred = _gaussian_blur(x, torch.tensor([0.5, 1.0, 1.5, 2.0]))
    assert blurred.shape == x.shape and (blurred.std((2, 3)) < x.std((2, 3))).all()
    torch.testing.assert_close(blurred.mean((2, 3)), x.mean((2, 3)), rtol=0, atol=0.03)


def _crop_statistics(crops: torch.Tensor) -> dict[str, np.ndarray]:
    return {
        "mean_r": crops[:, 0].mean((1, 2)).numpy(),
        "mean_b": crops[:, 2].mean((1, 2)).numpy(),
        "std": crops.std((1, 2, 3)).numpy(),
        "gray": (crops[:, 0] - crops[:, 1]).abs().mean((1, 2)).numpy(),
        "sharp": (crops[..., 1:] - crops[..., :-1]).abs().mean((1, 2, 3)).numpy(),
        "left_right": (crops[..., :8].mean((1, 2, 3)) - crops[..., 8:].mean((1, 2, 3))).numpy(),
    }


def test_fast_path_has_the_reference_distribution_of_crop_statistics():
    """Two-sample Kolmogorov-Smirnov tests on per-crop statistics (means, contrast, colourfulness, sharpness,
    flip direction) of 400 crops from each pipeline with SwAV's probabilities."""
    stats = pytest.importorskip("scipy.stats")
    aug = AugConfig(global_size=16, global_crops=1, local_crops=0, global_scale=(0.14, 1.0))
    img = photo()
    n = 400
    torch.manual_seed(0)
    reference = MultiCropTransform(aug)
    ref = torch.stack([reference(img)[0] for _ in range(n)])
    torch.manual_seed(1)
    geometry = FastCropTransform(aug)
    raw = torch.stack([geometry(img)[0] for _ in range(n)])
    fast = BatchColorAugment(aug)([raw], torch.Generator().manual_seed(2))[0]
    a, b = _crop_statistics(ref), _crop_statistics(fast)
    for key in a:
        p = stats.ks_2samp(a[key], b[key]).pvalue
        assert p > 1e-3, (key, p, a[key].mean(), b[key].mean())


def test_fast_pipeline_from_config_for_folders_and_shards(tmp_path):
    from openseer.data.pack import write_shards

    write_images(tmp_path / "imgs", 16, size=20)
    write_shards(tmp_path / "imgs", tmp_path / "sh", max_count=8, progress=False)
    for path in (tmp_path / "imgs", tmp_path / "sh"):
        cfg = load_config("demo", [*TINY_OVERRIDES, f"data.path={path}", "data.augment=fast"])
        sampler, loader, n = build_pretrain_data(cfg, 0, 1, torch.device("cpu"))
        sampler.set_epoch(0, 0)
        batch = next(iter(loader))
        assert n == 16 and [tuple(c.shape) for c in batch.crops] == [(8, 3, 24, 24)] * 2 + [(8, 3, 16, 16)] * 2
        assert all(c.dtype == torch.float32 and torch.isfinite(c).all() for c in batch.crops)
        sampler.set_epoch(0, 0)
        again = next(iter(loader))
        assert torch.equal(again.crops[0], batch.crops[0])  # seeded per (epoch, step): reproducible
