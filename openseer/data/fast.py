"""The fast multi-crop path: geometry per image, colour per batch.

The reference pipeline (:mod:`openseer.data.transforms`, SwAV's ``main_swav.py``) runs ten PIL/torchvision
calls per crop in the loader. Here each loader sample only

1. decodes the image, at a reduced DCT scale for JPEGs when even the smallest crop any crop position can
   draw still covers at least its output size after the reduction (PIL ``draft``: libjpeg skips the
   detail that the crop's resize would discard; 2-8x faster decoding of large photos, none for 32 px ones);
2. draws each crop's RandomResizedCrop box with torchvision's own ``make_params`` (same distribution) and
   cuts and resizes it with the reference's PIL calls (crop, bilinear or bicubic resize: bit-identical
   geometry);
3. returns the crops as uint8 tensors (4x less to copy between processes than float32).

:class:`BatchColorAugment` then applies, per crop position and to the whole batch at once, the rest of
SwAV's recipe with the same probabilities and parameter ranges: horizontal flip, colour jitter (brightness,
contrast, saturation, hue in a random order per sample, as torchvision's ``ColorJitter``), random grayscale,
Gaussian blur (sigma in pixels of the crop, kernel to +-3 sigma), solarisation (``x >= threshold / 255``
becomes ``1 - x``, as PIL's ``ImageOps.solarize`` on uint8) and normalisation, each crop position with its
own recipe (:func:`openseer.data.recipes.crop_recipes`). These run on float
tensors without PIL's uint8 rounding between operations, so single crops are not bit-identical to the
reference; tests/data/test_fast.py checks that the distributions of crop statistics match.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from openseer.config import AugConfig
from openseer.data.images import load_rgb
from openseer.data.recipes import CropRecipe, crop_recipes

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L") and torchvision's rgb_to_grayscale
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class FastCropTransform:
    """PIL-free multi-crop geometry: bytes or PIL image -> list of uint8 (3, s, s) tensors, global first."""

    def __init__(self, aug: AugConfig, draft: bool = True) -> None:
        self.aug = aug
        self.draft = draft
        ratio = (3.0 / 4.0, 4.0 / 3.0)
        self.positions = [(r.size, r.scale) for r in crop_recipes(aug)]
        self.resample = _RESAMPLE[aug.interpolation]
        self._rrc = {
            (s, sc): v2.RandomResizedCrop(s, scale=sc, ratio=ratio, antialias=True) for s, sc in self.positions
        }
        # Smallest side a crop box can have, as a fraction of sqrt(image area): sqrt(min_scale * 3/4).
        self._min_side = min(math.sqrt(sc[0] * ratio[0]) / s for s, sc in self.positions)

    def draft_size(self, width: int, height: int) -> tuple[int, int]:
        """The size to ask libjpeg's DCT scaling for: every crop box keeps >= its output size in pixels."""
        reduce = self._min_side * math.sqrt(width * height)  # smallest box side / its output side
        factor = 1
        while factor * 2 <= min(8, reduce):
            factor *= 2
        return math.ceil(width / factor), math.ceil(height / factor)

    def decode(self, data: bytes, conversions: list[str] | None = None) -> Image.Image:
        """load_rgb, with JPEG DCT-scaled decoding when ``draft`` is on."""
        return load_rgb(data, draft=self.draft_size if self.draft else None, conversions=conversions)

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        if img.mode != "RGB":
            img = img.convert("RGB")
        crops = []
        for size, scale in self.positions:
            p = self._rrc[(size, scale)].make_params([img])
            box = (p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"])
            # crop, then resize: bit-identical to torchvision's resized_crop on PIL (resize(box=...) would
            # also filter pixels outside the box and differ at the edges)
            out = img.crop(box).resize((size, size), self.resample)
            crops.append(torch.from_numpy(np.array(out)).permute(2, 0, 1))
        return crops


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, y: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * y).clamp_(0, 1)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images in [0, 1] by ``shift`` turns (the HSV hue of torchvision and PIL).

    HSV -> RGB uses the closed form ``c_n = v - v s clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6h) mod 6``
    with n = 5, 3, 1 for R, G, B: a few full-size temporaries instead of a six-way select.
    """
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    sat_v = delta  # v * s, since s = delta / v
    dz = delta.clamp_min(1e-12)
    h = torch.where(maxc == r, (g - b) / dz, torch.where(maxc == g, 2.0 + (b - r) / dz, 4.0 + (r - g) / dz))
    h6 = torch.remainder(h + 6.0 * shift.view(-1, 1, 1), 6.0)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        channels.append(maxc - sat_v * torch.minimum(k, 4.0 - k).clamp_(0, 1))
    return torch.stack(channels, 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur, kernel to +-3 sigma, edges replicated (as PIL)."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, k)
    flat = x.reshape(1, n * c, h, w)
    flat = torch.nn.functional.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = torch.nn.functional.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = torch.nn.functional.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


class BatchColorAugment:
    """Flip, colour jitter, grayscale, blur, solarisation and normalisation of whole batches of uint8 crops.

    Call with the list of ``(B, 3, s, s)`` uint8 crop tensors of a batch (one per crop position, as
    :class:`FastCropTransform` produces them after collation) and a generator on their device; returns the
    normalised float32 crops. Crop position i uses ``self.recipes[i]``. Every sample draws its own parameters
    (probability gates, factors, the order of the four jitter operations, sigma), exactly as the reference
    draws them per crop.
    """

    def __init__(self, aug: AugConfig) -> None:
        self.aug = aug
        self.recipes = crop_recipes(aug)
        self.strength = self.recipes[0].jitter  # the first crop's ColorJitter numbers

    def __call__(self, crops: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
        return [self.augment(c, gen, r) for c, r in zip(crops, self.recipes, strict=True)]

    def augment(self, x: torch.Tensor, gen: torch.Generator, recipe: CropRecipe | None = None) -> torch.Tensor:
        """One crop position's batch ``x`` augmented with ``recipe`` (default: the first crop's)."""
        r = recipe or self.recipes[0]
        dev = x.device
        n = x.shape[0]

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=gen, device=dev)

        x = x.float().div_(255)
        flip = rand(n) < r.flip_prob
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        jitter = rand(n) < r.jitter_prob
        b, c, s, h = r.jitter
        factors = [1 + b * (2 * rand(n) - 1), 1 + c * (2 * rand(n) - 1), 1 + s * (2 * rand(n) - 1)]
        hue = h * (2 * rand(n) - 1)
        order = rand(n, 4).argsort(1)  # a uniformly random permutation per sample, like torch.randperm(4)
        for slot in range(4):
            for op in range(4):
                idx = torch.nonzero(jitter & (order[:, slot] == op)).flatten()
                if idx.numel() == 0 or r.jitter[op] == 0:
                    continue
                sub = x[idx]
                if op == 0:
                    sub = (sub * factors[0][idx].view(-1, 1, 1, 1)).clamp_(0, 1)
                elif op == 1:
                    mean = _gray(sub).mean((1, 2, 3), keepdim=True)
                    sub = _blend(sub, mean, factors[1][idx].view(-1, 1, 1, 1))
                elif op == 2:
                    sub = _blend(sub, _gray(sub), factors[2][idx].view(-1, 1, 1, 1))
                else:
                    sub = _adjust_hue(sub, hue[idx])
                x = x.index_copy(0, idx, sub)
        gray = rand(n) < r.grayscale_prob
        x = torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        blur = rand(n) < r.blur_prob
        sigma = r.blur_sigma[0] + (r.blur_sigma[1] - r.blur_sigma[0]) * rand(n)
        idx = torch.nonzero(blur).flatten()
        if idx.numel():
            x = x.index_copy(0, idx, _gaussian_blur(x[idx], sigma[idx]))
        if r.solarize_prob > 0:  # drawn only where used: recipes without it keep their random stream
            solarize = (rand(n) < r.solarize_prob).view(-1, 1, 1, 1)
            x = torch.where(solarize & (x >= r.solarize_threshold / 255), 1 - x, x)
        mean = torch.tensor(self.aug.mean, device=dev, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.aug.std, device=dev, dtype=x.dtype).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()
