"""Per-view augmentation recipes (aug.views, aug.local), solarisation, four-number jitter and bicubic crops:
every paper preset's views against its reference's transform parameters, in both pipelines; how often
blur and solarisation happen per view; bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from openseer.config import AugConfig, ViewAugConfig, config_from_dict, load_config, to_dict
from openseer.data.fast import BatchColorAugment, FastCropTransform
from openseer.data.recipes import crop_recipes
from openseer.data.transforms import MultiCropTransform, RandomBlur
from openseer.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------
# the references' transforms, written out from their sources

# BYOL's colour recipe, shared by MoCo v3, Barlow Twins, VICReg and DINO:
# ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1) applied with p=0.8, RandomGrayscale(p=0.2),
# RandomHorizontalFlip(p=0.5), blur sigma U(0.1, 2.0), PIL ImageOps.solarize (threshold 128).
BYOL_COLOUR = {"flip": 0.5, "jitter": (0.4, 0.4, 0.2, 0.1), "jitter_p": 0.8, "gray": 0.2, "sigma": (0.1, 2.0)}
# deepmind byol utils/augmentations.py: view1 gaussian_blur=dict(apply_prob=1.0), solarize=dict(apply_prob=0.0,
# threshold=0.5); view2 gaussian_blur=dict(apply_prob=0.1), solarize=dict(apply_prob=0.2, threshold=0.5) on [0, 1]
# images (= 128 on uint8: 127/255 < 0.5 <= 128/255).
# moco-v3 main_moco.py: augmentation1 RandomApply([GaussianBlur([.1, 2.])], p=1.0); augmentation2 ...p=0.1),
# RandomApply([moco.loader.Solarize()], p=0.2) (ImageOps.solarize, threshold 128).
# barlowtwins main.py Transform and vicreg augmentations.py TrainTransform: transform GaussianBlur(p=1.0),
# Solarization(p=0.0); transform_prime GaussianBlur(p=0.1), Solarization(p=0.2).
# dino main_dino.py DataAugmentationDINO: global_transfo1 GaussianBlur(1.0); global_transfo2 GaussianBlur(0.1),
# Solarization(0.2); local_transfo GaussianBlur(p=0.5).
TWO_VIEWS = [{"blur": 1.0, "solarize": 0.0}, {"blur": 0.1, "solarize": 0.2}]
# simclr tf2 data_util.py: color_jitter strength 1.0 (brightness/contrast/saturation 0.8, hue 0.2) p 0.8,
# to_grayscale p 0.2, random_blur p 0.5 on both views, crop_and_resize bicubic; no solarisation.
SIMCLR = {"flip": 0.5, "jitter": (0.8, 0.8, 0.8, 0.2), "jitter_p": 0.8, "gray": 0.2, "sigma": (0.1, 2.0)}

# preset -> (RandomResizedCrop interpolation, colour recipe, [global view i], local crops or None)
PAPER = {
    # byol: crops resized with tf.image.resize(..., method=BICUBIC)
    "byol-imagenet": ("bicubic", BYOL_COLOUR, TWO_VIEWS, None),
    # moco-v3: transforms.RandomResizedCrop(224, scale=(args.crop_min, 1.)): torchvision's default, bilinear
    "mocov3-resnet50": ("bilinear", BYOL_COLOUR, TWO_VIEWS, None),
    "mocov3-vit-small": ("bilinear", BYOL_COLOUR, TWO_VIEWS, None),
    # barlowtwins: RandomResizedCrop(224, interpolation=Image.BICUBIC); vicreg: InterpolationMode.BICUBIC
    "barlowtwins": ("bicubic", BYOL_COLOUR, TWO_VIEWS, None),
    "vicreg": ("bicubic", BYOL_COLOUR, TWO_VIEWS, None),
    # dino: RandomResizedCrop(..., interpolation=Image.BICUBIC) for global and local crops
    "dino-vit-small": ("bicubic", BYOL_COLOUR, TWO_VIEWS, {"blur": 0.5, "solarize": 0.0}),
    "simclr-imagenet": ("bicubic", SIMCLR, [{"blur": 0.5, "solarize": 0.0}] * 2, None),
}


def reference_parameters(compose: v2.Compose) -> dict:
    """The parameters of a built reference-pipeline crop transform, read off its torchvision modules."""
    out = {"solarize": 0.0, "threshold": None}
    for t in compose.transforms:
        if isinstance(t, v2.RandomResizedCrop):
            out["interpolation"] = t.interpolation.value
        elif isinstance(t, v2.RandomHorizontalFlip):
            out["flip"] = t.p
        elif isinstance(t, v2.RandomGrayscale):
            out["gray"] = t.p
        elif isinstance(t, v2.RandomSolarize):
            out["solarize"], out["threshold"] = t.p, t.threshold
        elif isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.ColorJitter):
            j = t.transforms[0]
            out["jitter_p"] = t.p
            out["jitter"] = tuple(
                0.0 if r is None else round(r[1] - (0.0 if name == "hue" else 1.0), 6)
                for name, r in (("b", j.brightness), ("c", j.contrast), ("s", j.saturation), ("hue", j.hue))
            )
        elif isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], RandomBlur):
            out["blur"], out["sigma"] = t.p, t.transforms[0].sigma
    return out


def fast_parameters(recipe, geometry: FastCropTransform) -> dict:
    """The parameters the fast pipeline uses for one crop position (BatchColorAugment reads the recipe)."""
    return {
        "interpolation": {Image.Resampling.BILINEAR: "bilinear", Image.Resampling.BICUBIC: "bicubic"}[
            geometry.resample
        ],
        "flip": recipe.flip_prob,
        "gray": recipe.grayscale_prob,
        "solarize": recipe.solarize_prob,
        "threshold": recipe.solarize_threshold if recipe.solarize_prob > 0 else None,
        "jitter_p": recipe.jitter_prob,
        "jitter": tuple(round(v, 6) for v in recipe.jitter),
        "blur": recipe.blur_prob,
        "sigma": recipe.blur_sigma,
    }


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_each_view_of_every_paper_preset_is_its_references(preset):
    interpolation, colour, views, local = PAPER[preset]
    aug = load_config(preset).aug
    expected = [dict(colour, **v) for v in views] + [dict(colour, **(local or {})) for _ in range(aug.local_crops)]
    assert aug.global_crops == len(views) and (aug.local_crops > 0) == (local is not None)
    for e in expected:
        e.update(interpolation=interpolation, threshold=128.0 if e["solarize"] else None)
    reference = MultiCropTransform(aug)
    built = reference.global_transforms + [reference.local_transform] * aug.local_crops
    assert [reference_parameters(t) for t in built] == expected
    geometry = FastCropTransform(aug)
    assert [fast_parameters(r, geometry) for r in BatchColorAugment(aug).recipes] == expected


# ---------------------------------------------------------------------------------------------------------
# how the recipes resolve


def test_views_override_aug_per_crop_and_unset_fields_inherit():
    aug = AugConfig(
        global_crops=3,
        local_crops=2,
        color_jitter=1.0,
        blur_prob=0.5,
        views=[ViewAugConfig(blur_prob=1.0), ViewAugConfig(color_jitter_bcsh=(0.4, 0.4, 0.2, 0.1), solarize_prob=0.2)],
        local=ViewAugConfig(color_jitter=0.5, grayscale_prob=0.0),
    )
    r = crop_recipes(aug)
    assert [x.size for x in r] == [224] * 3 + [96] * 2
    assert [x.blur_prob for x in r] == [1.0, 0.5, 1.0, 0.5, 0.5]  # global crop i takes views[i % 2]
    assert [x.solarize_prob for x in r] == [0.0, 0.2, 0.0, 0.0, 0.0]
    assert r[0].jitter == pytest.approx((0.8, 0.8, 0.8, 0.2))  # aug's strength 1.0
    assert r[1].jitter == (0.4, 0.4, 0.2, 0.1)
    assert r[3].jitter == pytest.approx((0.4, 0.4, 0.4, 0.1)) and r[3].grayscale_prob == 0.0  # local strength 0.5
    # aug-level four numbers apply wherever a view sets no jitter of its own; a view's strength still wins
    four = dataclasses.replace(aug, color_jitter_bcsh=(0.1, 0.2, 0.3, 0.05))
    assert [x.jitter for x in crop_recipes(four)][:3] == [(0.1, 0.2, 0.3, 0.05), (0.4, 0.4, 0.2, 0.1)] + [
        (0.1, 0.2, 0.3, 0.05)
    ]
    assert crop_recipes(four)[3].jitter == pytest.approx((0.4, 0.4, 0.4, 0.1))


def test_without_views_every_crop_has_the_aug_values():
    aug = AugConfig(global_crops=2, local_crops=1, blur_prob=0.3, solarize_prob=0.1, solarize_threshold=100.0)
    r = crop_recipes(aug)
    assert {(x.blur_prob, x.solarize_prob, x.solarize_threshold, x.interpolation) for x in r} == {
        (0.3, 0.1, 100.0, "bilinear")
    }


def test_views_from_cli_overrides_and_a_run_dirs_config_round_trip():
    cfg = load_config(
        None,
        [
            "aug.views=[{blur_prob: 1.0}, {blur_prob: 0.1, solarize_prob: 0.2}]",
            "aug.local.blur_prob=0.5",
            "aug.color_jitter_bcsh=[0.4, 0.4, 0.2, 0.1]",
            "aug.interpolation=bicubic",
        ],
    )
    assert [(x.blur_prob, x.solarize_prob) for x in crop_recipes(cfg.aug)] == [(1.0, 0.0), (0.1, 0.2)] + [
        (0.5, 0.0)
    ] * 6
    assert config_from_dict(to_dict(cfg)) == cfg


# ---------------------------------------------------------------------------------------------------------
# what the pipelines do with them


def checker(size: int = 16) -> Image.Image:
    """A 1-pixel checkerboard of 200 and 240: every pixel above the threshold 128, sharp enough that any blur
    of sigma >= 1 removes most of its contrast."""
    arr = np.where((np.add.outer(np.arange(size), np.arange(size)) % 2)[..., None] == 0, 200, 240)
    return Image.fromarray(np.repeat(arr, 3, -1).astype(np.uint8))


STAT_AUG = AugConfig(
    global_crops=2,
    global_size=16,
    global_scale=(1.0, 1.0),  # the whole image, unresized
    local_crops=1,
    local_size=16,
    local_scale=(1.0, 1.0),
    flip_prob=0.0,
    color_jitter_prob=0.0,
    grayscale_prob=0.0,
    blur_sigma=(1.0, 2.0),
    views=[ViewAugConfig(blur_prob=1.0, solarize_prob=0.0), ViewAugConfig(blur_prob=0.1, solarize_prob=0.2)],
    local=ViewAugConfig(blur_prob=0.5, solarize_prob=0.5),
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
)


def _blurred_and_solarized(crops: torch.Tensor) -> tuple[float, float]:
    """Fractions of (N, 3, s, s) crops in [0, 1] that were blurred (checker contrast gone) and solarised (the
    values, all above 128 before, now below it)."""
    contrast = (crops[..., 1:] - crops[..., :-1]).abs().mean((1, 2, 3))  # 40/255 = 0.157 when sharp
    return float((contrast < 0.08).float().mean()), float((crops.mean((1, 2, 3)) < 0.5).float().mean())


@pytest.mark.parametrize("pipeline", ["reference", "fast"])
def test_blur_and_solarisation_happen_with_each_views_probability(pipeline):
    n, img = 600, checker()
    torch.manual_seed(0)
    if pipeline == "reference":
        transform = MultiCropTransform(STAT_AUG)
        samples = [transform(img) for _ in range(n)]
        positions = [torch.stack([s[i] for s in samples]) for i in range(3)]
    else:
        geometry = FastCropTransform(STAT_AUG)
        raw = [geometry(img) for _ in range(n)]
        batches = [torch.stack([s[i] for s in raw]) for i in range(3)]
        positions = BatchColorAugment(STAT_AUG)(batches, torch.Generator().manual_seed(0))
    for crops, (blur_p, solarize_p) in zip(positions, [(1.0, 0.0), (0.1, 0.2), (0.5, 0.5)], strict=True):
        blurred, solarized = _blurred_and_solarized(crops)
        for seen, p in ((blurred, blur_p), (solarized, solarize_p)):
            assert abs(seen - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-9, (pipeline, seen, p)


@pytest.mark.parametrize("threshold", [128.0, 100.0, 0.0, 255.0])
def test_solarisation_is_pils_in_both_pipelines(threshold):
    """Every value 0..255 through a solarise-only recipe: the reference pipeline, the fast pipeline and
    PIL's ImageOps.solarize (v -> 255 - v where v >= threshold) agree."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = Image.fromarray(np.stack([values, values.T, 255 - values], -1))
    off = {"blur_prob": 0.0, "flip_prob": 0.0, "color_jitter_prob": 0.0, "grayscale_prob": 0.0}
    aug = dataclasses.replace(STAT_AUG, **off, solarize_prob=1.0, solarize_threshold=threshold, views=[], local_crops=0)
    expected = torch.from_numpy(np.array(ImageOps.solarize(img, threshold))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(MultiCropTransform(aug)(img)[0], expected, rtol=0, atol=1e-6)
    raw = FastCropTransform(aug)(img)
    fast = BatchColorAugment(aug)([c[None] for c in raw], torch.Generator().manual_seed(0))[0][0]
    torch.testing.assert_close(fast, expected, rtol=0, atol=1e-6)
    independent = np.where(np.array(img) >= threshold, 255 - np.array(img).astype(int), np.array(img))
    assert np.array_equal(np.round(expected.permute(1, 2, 0).numpy() * 255).astype(int), independent)


# ---------------------------------------------------------------------------------------------------------
# bad input: one line naming what is valid


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("aug.views=[{blurr: 1.0}]", r"unknown config key 'aug.views\[0\].blurr'.*valid keys here: blur_prob, "),
        ("aug.local.solarise_prob=0.2", r"unknown config key 'aug.local.solarise_prob'.*solarize_prob"),
        ("aug.views=[{}, {solarize_prob: 1.5}]", r"aug.views\[1\].solarize_prob=1.5 must be a probability in \[0, 1\]"),
        ("aug.views=[{solarize_threshold: 300}]", r"solarize_threshold=300.0 must lie in the image range \[0, 255\]"),
        ("aug.solarize_threshold=-1", r"aug.solarize_threshold=-1.0 must lie in the image range"),
        (
            "aug.color_jitter_bcsh=[0.4, 0.4, 0.2]",
            r"color_jitter_bcsh=\[0.4, 0.4, 0.2\] must be \[brightness, contrast",
        ),
        ("aug.views=[{color_jitter_bcsh: [0.4, 0.4, 0.2, 0.7]}]", r"hue <= 0.5"),
        ("aug.local.blur_sigma=[2.0, 1.0]", r"aug.local.blur_sigma=\[2.0, 1.0\] must satisfy 0 < low <= high"),
        ("aug.interpolation=nearest", r"expected one of 'bilinear', 'bicubic'"),
        ("aug.views=[0.5]", r"aug.views\[0\] is a section"),
    ],
)
def test_bad_view_recipes_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)
