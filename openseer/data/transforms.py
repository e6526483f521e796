"""Multi-crop augmentation (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments", sec. 3.2 and appendix A) and the evaluation resize / centre-crop.

Each crop follows SwAV's reference ``main_swav.py`` (facebookresearch/swav, ``MultiCropDataset``):
RandomResizedCrop -> horizontal flip -> colour distortion (jitter with probability p, then random grayscale,
the SimCLR recipe) -> Gaussian blur -> tensor -> normalise; with a solarisation after the blur where a view's
recipe asks for one (BYOL, MoCo v3, Barlow Twins, VICReg, DINO: ``PIL.ImageOps.solarize``, threshold 128).
Each crop position has its own parameters (:func:`openseer.data.recipes.crop_recipes`: ``aug.views``,
``aug.local``).

The pipeline works on PIL images. Measured per crop on one core of a shared 2-core machine (torchvision
0.29, Pillow 13, SwAV's default probabilities, sigma in [0.1, 2]): 32 px crops of a 32 px image 0.66 ms
this way vs 1.33 ms on uint8 tensors; 96 px crops of a 256 px image 1.50 ms vs 2.90 ms; 224 px crops 4.7 ms
vs 11.7 ms. Half of the gap is the blur: torchvision's ``GaussianBlur`` convolves a float tensor even for
PIL input (2.2 ms at 96 px), whereas PIL's ``GaussianBlur`` (0.2 ms) is what SwAV's reference uses
(``PILRandomGaussianBlur``), so :class:`RandomBlur` wraps PIL's filter.

All randomness comes from torch's global CPU generator (torchvision's v2 transforms draw from it, and so
does :class:`RandomBlur`), so ``torch.manual_seed`` makes the crops reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from openseer.config import AugConfig
from openseer.data.recipes import CropRecipe, crop_recipes
from openseer.errors import ConfigError

INTERPOLATION = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def _uniform(low: float, high: float) -> float:
    """A float drawn uniformly from [low, high] with torch's global generator."""
    return low + (high - low) * float(torch.rand(()))


class RandomBlur:
    """Gaussian blur of a PIL image with sigma ~ U(sigma_min, sigma_max), in pixels of the crop.

    PIL's ``GaussianBlur(radius)`` takes the standard deviation and approximates the Gaussian by three
    extended box blurs, whose support is about +-3 sigma: the same reach as an explicit kernel of
    ``2 * ceil(3 * sigma) + 1`` taps, which truncates less than SimCLR's "10% of the image" kernel would on
    small crops (9 taps at 96 px cut a sigma = 2 Gaussian at +-2 sigma). Apply it with a probability by
    wrapping it in ``v2.RandomApply``.
    """

    def __init__(self, sigma: tuple[float, float]) -> None:
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=_uniform(*self.sigma)))

    def __repr__(self) -> str:
        return f"RandomBlur(sigma={self.sigma})"


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
        v2.ToPureTensor(),
    ]


def crop_transform(recipe: CropRecipe, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """The augmentation of one crop position: PIL RGB image in, normalised (3, size, size) float32 out.

    Args:
        recipe: the crop's size, scale, interpolation, probabilities, jitter, blur and solarisation.
        mean: normalisation mean (RGB).
        std: normalisation std (RGB).
    """
    r = recipe
    # A solarisation step only where the recipe has one, so that recipes without it draw exactly the random
    # numbers they drew before it existed (same crops for the same seed).
    solarize = [v2.RandomSolarize(r.solarize_threshold, p=r.solarize_prob)] if r.solarize_prob > 0 else []
    return v2.Compose(
        [
            v2.RandomResizedCrop(r.size, scale=r.scale, interpolation=INTERPOLATION[r.interpolation], antialias=True),
            v2.RandomHorizontalFlip(p=r.flip_prob),
            # SimCLR's colour distortion (swav get_color_distortion(s), VISSL ImgPilColorDistortion):
            # ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) for a strength s (SwAV and SEER: s = 1), or the four numbers
            # of BYOL and its successors (0.4, 0.4, 0.2, 0.1).
            v2.RandomApply([v2.ColorJitter(*r.jitter)], p=r.jitter_prob),
            v2.RandomGrayscale(p=r.grayscale_prob),
            v2.RandomApply([RandomBlur(r.blur_sigma)], p=r.blur_prob),
            *solarize,
            *_to_normalised_tensor(mean, std),
        ]
    )


class MultiCropTransform:
    """SwAV multi-crop: ``aug.global_crops`` high-resolution crops, then ``aug.local_crops`` small ones.

    Calling it on a PIL image returns a list of float32 tensors: first the global crops of shape
    ``(3, global_size, global_size)``, then the local crops of shape ``(3, local_size, local_size)``,
    normalised with ``aug.mean`` / ``aug.std``. Global crop i has its own recipe where ``aug.views`` gives one.
    """

    def __init__(self, aug: AugConfig) -> None:
        self.aug = aug
        self.recipes = crop_recipes(aug)
        self.global_transforms = [crop_transform(r, aug.mean, aug.std) for r in self.recipes[: aug.global_crops]]
        self.local_transform = crop_transform(self.recipes[-1], aug.mean, aug.std) if aug.local_crops > 0 else None

    @property
    def global_transform(self) -> v2.Compose:
        """The first global crop's transform."""
        return self.global_transforms[0]

    @property
    def num_crops(self) -> int:
        return self.aug.global_crops + self.aug.local_crops

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        if img.mode != "RGB":
            img = img.convert("RGB")
        crops = [t(img) for t in self.global_transforms]
        if self.local_transform is not None:
            crops += [self.local_transform(img) for _ in range(self.aug.local_crops)]
        return crops

    def __repr__(self) -> str:
        a = self.aug
        return (
            f"MultiCropTransform({a.global_crops}x{a.global_size}px scale={tuple(a.global_scale)}, "
            f"{a.local_crops}x{a.local_size}px scale={tuple(a.local_scale)})"
        )


def eval_transform(image_size: int, crop_pct: float, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Evaluation preprocessing: resize the shorter side to ``round(image_size / crop_pct)`` (bilinear,
    antialiased), centre-crop ``image_size``, convert to float32 and normalise.

    Args:
        image_size: side of the output in pixels.
        crop_pct: fraction of the resized image kept by the centre crop (0.875 for 224 px, 1.0 for CIFAR).
        mean: normalisation mean (RGB).
        std: normalisation std (RGB).
    """
    if not 0.0 < crop_pct <= 1.0:
        raise ConfigError(f"crop_pct={crop_pct} must lie in (0, 1]")
    if image_size <= 0:
        raise ConfigError(f"image_size={image_size} must be positive")
    return v2.Compose(
        [
            v2.RGB(),
            v2.Resize(round(image_size / crop_pct), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(image_size),
            *_to_normalised_tensor(mean, std),
        ]
    )
