"""Multi-crop and evaluation transforms: shapes, determinism, identity case, augmentation frequencies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from openseer.config import AugConfig
from openseer.data.transforms import MultiCropTransform, eval_transform

NO_NORM = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
ALL_OFF = {"flip_prob": 0.0, "color_jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": 0.0}


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def two_colour_image(size: int = 32) -> Image.Image:
    """Left half orange, right half dark blue with a vertical gradient: asymmetric and colourful."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[:, : size // 2] = (250, 160, 20)
    arr[:, size // 2 :] = (20, 40, 160)
    arr[..., 1] += np.linspace(0, 60, size, dtype=np.uint8)[:, None]
    return Image.fromarray(arr)


def small_aug(**overrides) -> AugConfig:
    values = dict(global_crops=2, global_size=32, local_crops=3, local_size=16)
    values.update(overrides)
    return AugConfig(**values)


def test_shapes_and_dtypes():
    crops = MultiCropTransform(small_aug())(noise_image(40, 30))
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(type(c) is torch.Tensor and c.dtype == torch.float32 for c in crops)
    only_global = MultiCropTransform(small_aug(local_crops=0))(noise_image(40, 30).convert("L"))
    assert [tuple(c.shape) for c in only_global] == [(3, 32, 32)] * 2


def test_deterministic_under_manual_seed():
    transform, img = MultiCropTransform(small_aug()), noise_image(48, 48)
    torch.manual_seed(7)
    first = transform(img)
    torch.manual_seed(7)
    second = transform(img)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    torch.manual_seed(8)
    assert not torch.equal(transform(img)[0], first[0])
    assert not torch.equal(first[0], first[1])  # crops of one image differ from each other


def test_identity_crop_equals_eval_resize():
    aug = small_aug(global_size=24, global_scale=(1.0, 1.0), local_crops=0, **ALL_OFF)
    img = noise_image(48, 48, seed=3)
    crop = MultiCropTransform(aug)(img)[0]
    # independent reference: PIL's (antialiased) bilinear resize, then normalise with numpy
    ref = np.asarray(img.resize((24, 24), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    ref = (ref - np.array(aug.mean)) / np.array(aug.std)
    ref_t = torch.from_numpy(ref).permute(2, 0, 1).float()
    assert torch.allclose(crop, ref_t, atol=1e-5)
    evaluated = eval_transform(24, 1.0, aug.mean, aug.std)(img)
    assert torch.allclose(crop, evaluated, atol=1e-5)


def test_eval_transform_resize_then_centre_crop():
    img = noise_image(64, 48, seed=1)
    out = eval_transform(28, 0.875, **NO_NORM)(img)
    assert tuple(out.shape) == (3, 28, 28) and out.dtype == torch.float32
    # shorter side 48 -> round(28 / 0.875) = 32, so the image becomes 43x32 and the centre 28x28 is kept
    resized = img.resize((int(32 * 64 / 48), 32), Image.Resampling.BILINEAR)
    left, top = round((resized.width - 28) / 2), round((resized.height - 28) / 2)
    ref = np.asarray(resized.crop((left, top, left + 28, top + 28)), dtype=np.float32) / 255.0
    assert torch.allclose(out, torch.from_numpy(ref).permute(2, 0, 1), atol=1e-5)
    with pytest.raises(ValueError, match="crop_pct"):
        eval_transform(28, 1.5, **NO_NORM)


def crops_of(aug: AugConfig, img: Image.Image, n: int, seed: int = 0) -> torch.Tensor:
    transform = MultiCropTransform(aug)
    torch.manual_seed(seed)
    return torch.stack([transform(img)[0] for _ in range(n)])


def is_gray(crops: torch.Tensor) -> torch.Tensor:
    return ((crops[:, 0] - crops[:, 1]).abs().amax(dim=(1, 2)) < 1e-6) & (
        (crops[:, 1] - crops[:, 2]).abs().amax(dim=(1, 2)) < 1e-6
    )


@pytest.mark.parametrize(
    "setting, prob",
    [("flip_prob", 0.5), ("grayscale_prob", 0.3), ("color_jitter_prob", 0.6), ("blur_prob", 0.4)],
)
def test_each_augmentation_applied_with_its_probability(setting, prob):
    n = 300
    overrides = {**ALL_OFF, setting: prob}
    aug = small_aug(global_scale=(1.0, 1.0), local_crops=0, blur_sigma=(1.0, 2.0), **NO_NORM, **overrides)
    img = two_colour_image()
    reference = crops_of(small_aug(global_scale=(1.0, 1.0), local_crops=0, **NO_NORM, **ALL_OFF), img, 1)[0]
    crops = crops_of(aug, img, n)
    if setting == "flip_prob":
        applied = torch.tensor([torch.equal(c, reference.flip(-1)) for c in crops])
        assert all(torch.equal(c, reference) or torch.equal(c, reference.flip(-1)) for c in crops)
    elif setting == "grayscale_prob":
        applied = is_gray(crops)
    else:
        applied = (crops - reference).abs().amax(dim=(1, 2, 3)) > 1e-6
    fraction = applied.float().mean().item()
    # binomial standard deviation is at most 0.029 for n = 300; allow about 3 of them
    assert abs(fraction - prob) < 0.09, f"{setting}: applied to {fraction:.3f} of crops, expected {prob}"


def test_default_recipe_frequencies():
    """With SwAV's defaults, flips happen half the time and exactly grayscale_prob of crops are gray
    (colour jitter's saturation factor is >= 1 - 0.8 * 0.8 > 0, so it never makes a crop gray by itself)."""
    aug = small_aug(global_scale=(1.0, 1.0), local_crops=0, **NO_NORM)
    crops = crops_of(aug, two_colour_image(), 300, seed=1)
    gray = is_gray(crops).float().mean().item()
    assert abs(gray - aug.grayscale_prob) < 0.08
    left, right = crops[..., :12].mean(dim=(1, 2, 3)), crops[..., -12:].mean(dim=(1, 2, 3))
    flipped = (left < right).float().mean().item()  # the bright orange half moved to the right
    assert abs(flipped - aug.flip_prob) < 0.09
