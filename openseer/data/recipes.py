"""The augmentation recipe of each crop position, resolved from ``aug`` and its per-view overrides.

SwAV applies one recipe to every crop. BYOL (Grill et al. 2020, appendix B, table 6; deepmind byol
``utils/augmentations.py`` ``view1``/``view2``), MoCo v3 (facebookresearch/moco-v3 ``main_moco.py``
``augmentation1``/``augmentation2``), Barlow Twins (facebookresearch/barlowtwins ``main.py`` ``Transform``),
VICReg (facebookresearch/vicreg ``augmentations.py`` ``TrainTransform``) and DINO (facebookresearch/dino
``main_dino.py`` ``DataAugmentationDINO``) give each view its own: blur p 1.0 on view 1, blur p 0.1 and
solarisation p 0.2 on view 2 (DINO's local crops: blur p 0.5). ``aug.views[i]`` and ``aug.local`` override
the ``aug.*`` values for global crop i and for the local crops; :func:`crop_recipes` resolves them once, and
both pipelines (:mod:`openseer.data.transforms`, :mod:`openseer.data.fast`) build their crops from the result.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from openseer.config import AugConfig, ViewAugConfig


@dataclass(frozen=True)
class CropRecipe:
    """Every parameter of one crop position's augmentation (the order of the references: crop, flip, jitter
    with probability, grayscale, blur, solarise, normalise)."""

    size: int  # output side in pixels
    scale: tuple[float, float]  # RandomResizedCrop area range
    interpolation: str  # "bilinear" or "bicubic" resampling of the crop
    flip_prob: float
    jitter: tuple[float, float, float, float]  # ColorJitter brightness, contrast, saturation, hue
    jitter_prob: float
    grayscale_prob: float
    blur_prob: float
    blur_sigma: tuple[float, float]  # in pixels of the crop
    solarize_prob: float
    solarize_threshold: float  # on the 0-255 scale: pixels >= it become 255 - v


def jitter_of_strength(s: float) -> tuple[float, float, float, float]:
    """SimCLR's colour distortion of strength s (swav ``get_color_distortion(s)``): (0.8s, 0.8s, 0.8s, 0.2s)."""
    return (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)


def _jitter(aug: AugConfig, view: ViewAugConfig) -> tuple[float, float, float, float]:
    """The view's four jitter numbers: its own bcsh, else its own strength, else aug's bcsh, else aug's strength."""
    if view.color_jitter_bcsh:
        return tuple(float(v) for v in view.color_jitter_bcsh)  # type: ignore[return-value]
    if view.color_jitter is None and view.color_jitter_bcsh is None and aug.color_jitter_bcsh:
        return tuple(float(v) for v in aug.color_jitter_bcsh)  # type: ignore[return-value]
    return jitter_of_strength(view.color_jitter if view.color_jitter is not None else aug.color_jitter)


def resolve(aug: AugConfig, view: ViewAugConfig, size: int, scale: tuple[float, float]) -> CropRecipe:
    """One crop position's recipe: ``view``'s set fields over ``aug``'s."""
    value = {f.name: getattr(view, f.name) for f in fields(ViewAugConfig)}
    value = {k: getattr(aug, k) if v is None else v for k, v in value.items()}
    return CropRecipe(
        size=size,
        scale=(float(scale[0]), float(scale[1])),
        interpolation=aug.interpolation,
        flip_prob=value["flip_prob"],
        jitter=_jitter(aug, view),
        jitter_prob=value["color_jitter_prob"],
        grayscale_prob=value["grayscale_prob"],
        blur_prob=value["blur_prob"],
        blur_sigma=(float(value["blur_sigma"][0]), float(value["blur_sigma"][1])),
        solarize_prob=value["solarize_prob"],
        solarize_threshold=float(value["solarize_threshold"]),
    )


def crop_recipes(aug: AugConfig) -> list[CropRecipe]:
    """The recipe of every crop position: ``aug.global_crops`` global ones (crop i with ``aug.views[i % n]``,
    or ``aug`` alone when no views are given), then ``aug.local_crops`` local ones (with ``aug.local``)."""
    views = list(aug.views) or [ViewAugConfig()]
    out = [resolve(aug, views[i % len(views)], aug.global_size, aug.global_scale) for i in range(aug.global_crops)]
    if aug.local_crops > 0:
        out += [resolve(aug, aug.local, aug.local_size, aug.local_scale)] * aug.local_crops
    return out
