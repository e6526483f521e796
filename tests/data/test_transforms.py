"""Multi-crop and evaluation transforms: shapes, determinism, identity case, augmentation frequencies."""

from __future__ import annotations

import dataclasses

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


def swav_crop_transform(size: int, scale: tuple[float, float], s: float = 1.0) -> object:
    """A crop of swav src/multicropdataset.py (torchvision v1, without its np.random blur), with
    ``get_color_distortion(s)``: RandomApply(ColorJitter(0.8s, 0.8s, 0.8s, 0.2s), p=0.8), RandomGrayscale(0.2)."""
    from torchvision import transforms as T

    color_distort = T.Compose(
        [T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8), T.RandomGrayscale(p=0.2)]
    )
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=scale),
            T.RandomHorizontalFlip(p=0.5),
            color_distort,
            T.ToTensor(),
            T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.228, 0.224, 0.225]),
        ]
    )


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_crops_equal_swav_get_color_distortion_under_the_same_seed(strength):
    """aug.color_jitter is SwAV's strength s: with the same seed, openseer's crop draws the same crop box, flip,
    jitter gate, jitter factors and order, and grayscale gate as SwAV's torchvision pipeline, so the crops are
    equal (blur off: SwAV draws it from numpy/random). The default is SwAV's s = 1."""
    assert AugConfig().color_jitter == 1.0
    aug = small_aug(color_jitter=strength, blur_prob=0.0, std=(0.228, 0.224, 0.225), local_crops=0)
    ours = MultiCropTransform(aug).global_transform
    ref = swav_crop_transform(aug.global_size, aug.global_scale, strength)
    weaker = MultiCropTransform(dataclasses.replace(aug, color_jitter=strength / 2)).global_transform
    img = noise_image(48, 40)
    jittered = 0
    for seed in range(40):
        torch.manual_seed(seed)
        expected = ref(img)
        torch.manual_seed(seed)
        got = ours(img)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=f"seed {seed}")
        torch.manual_seed(seed)
        jittered += int(not torch.allclose(weaker(img), got, atol=1e-3))
    assert jittered > 20  # most compared crops went through the jitter, whose factors depend on the strength


@pytest.mark.parametrize("strength", [1.0, 0.5, 0.8])
def test_jitter_ranges_are_swav_strength_in_both_pipelines(strength):
    """The reference pipeline's ColorJitter and the fast pipeline's per-sample factors span SwAV's ranges:
    brightness, contrast, saturation in [1 - 0.8s, 1 + 0.8s], hue in [-0.2s, 0.2s]. A run directory written
    before the default became 1.0 holds ``color_jitter: 0.8`` and keeps its jitter (0.64, 0.64, 0.64, 0.16)."""
    from torchvision import transforms as T
    from torchvision.transforms import v2

    from openseer.config import config_from_dict
    from openseer.data.fast import BatchColorAugment

    ref = T.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)
    aug = config_from_dict({"aug": {"color_jitter": strength}}).aug
    jitters = [t for t in MultiCropTransform(aug).global_transform.transforms if isinstance(t, v2.RandomApply)]
    jitter = jitters[0].transforms[0]
    assert isinstance(jitter, v2.ColorJitter)
    for name in ("brightness", "contrast", "saturation", "hue"):
        np.testing.assert_allclose(getattr(jitter, name), getattr(ref, name), rtol=1e-12)
    fast = BatchColorAugment(aug).strength
    np.testing.assert_allclose(
        fast, [ref.brightness[1] - 1, ref.contrast[1] - 1, ref.saturation[1] - 1, ref.hue[1]], rtol=1e-12
    )


def test_color_jitter_strength_is_validated():
    from openseer.config import ConfigError, load_config

    for bad in ("-0.1", "3.0"):
        with pytest.raises(ConfigError, match="aug.color_jitter"):
            load_config(None, [f"aug.color_jitter={bad}"])
