"""Decoding image bytes into RGB, robustly.

Web-scale collections (SEER pretrains on a billion uncurated Instagram images) always contain some files that
are empty, cut short, not images at all, or absurdly large. :func:`load_rgb` turns every such case into a
:class:`BadImage` with a short ``reason`` so that the data loader can skip the file and count it, and turns
every image it can read, whatever its mode (palette, 16-bit, CMYK, alpha, EXIF-rotated, animated), into
the same thing: a fully decoded 8-bit RGB :class:`PIL.Image.Image`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from openseer.errors import BAD_IMAGE_REASONS, BadImage, DataError  # noqa: F401 (re-exported: old import path)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif")

#: Formats PIL decodes only with a plugin: (reason of the skip without it, pip package, module to import).
_PLUGINS = {
    "heif": ("needs_pillow_heif", "pillow-heif", "pillow_heif"),
    "avif": ("needs_pillow_avif", "pillow-avif-plugin", "pillow_avif"),
}


# Transparent pixels are composited onto white: their colour values are undefined (often black), and
# web images with alpha (logos, product photos) are designed to be seen on a white page.
_BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def load_rgb(
    data: bytes,
    draft: Callable[[int, int], tuple[int, int]] | None = None,
    conversions: list[str] | None = None,
) -> Image.Image:
    """Decode image bytes into a fully loaded 8-bit RGB image.

    The EXIF orientation is applied, animated images give their first frame, transparent pixels are
    composited onto white, 16-bit and float images are scaled (not clipped) to 8 bits, and every other mode
    (L, LA, P, 1, CMYK, ...) is converted to RGB. Tiny images are fine (the crops upscale them).

    Args:
        data: the raw bytes of an image file.
        draft: for JPEGs, ``(width, height) -> minimum size``: libjpeg then decodes at the smallest DCT scale
            (1/2, 1/4 or 1/8) that keeps at least that size (PIL ``Image.draft``); ignored for other formats.
        conversions: if given, what had to be converted is appended, from :data:`CONVERSIONS` (for counting
            what an uncurated collection holds).

    Returns:
        An RGB image whose pixels are already decoded (so decoding errors cannot surface later).

    Raises:
        BadImage: with ``reason`` "empty", "truncated", "unreadable" or "too_large".
    """
    if not data:
        raise BadImage("empty", "zero bytes")
    with warnings.catch_warnings():
        # PIL's UserWarnings ("Corrupt EXIF data", ...) would repeat for every such file of a large
        # collection, from every worker; the image is used or skipped either way.
        warnings.simplefilter("ignore", UserWarning)
        # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; both mean "too large" for us.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = _decode(data, draft)
        rotated = _apply_exif_orientation(img)
        if conversions is not None:
            conversions += _conversions(img, rotated)
        try:
            return _to_rgb(img)
        except Exception as e:  # an exotic mode PIL cannot convert
            raise BadImage("unreadable", f"cannot convert mode {img.mode} to RGB ({e})") from None


def _decode(data: bytes, draft: Callable[[int, int], tuple[int, int]] | None = None) -> Image.Image:
    """Open and fully load the first frame (decompression-bomb warnings must be errors here)."""
    try:
        img = Image.open(io.BytesIO(data))
        if draft is not None and img.format == "JPEG":
            img.draft(None, draft(*img.size))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("too_large", str(e)) from None
    except UnidentifiedImageError:
        kind = _iso_media_kind(data)
        if kind is not None and _register_plugin(kind):
            return _decode(data, draft)  # the plugin is installed but was not registered yet
        if kind is not None:
            reason, package, _ = _PLUGINS[kind]
            raise BadImage(reason, f"a {kind.upper()} image; pip install {package} to decode it") from None
        raise BadImage("unreadable", "not a recognised image format") from None
    except Exception as e:  # PIL's parsers raise many types (OSError, SyntaxError, struct.error, ...)
        raise BadImage(_load_failure_reason(e), f"{type(e).__name__}: {e}") from None
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as e:
        raise BadImage("too_large", str(e)) from None
    except Exception as e:
        raise BadImage(_load_failure_reason(e), f"{type(e).__name__}: {e}") from None
    return img


_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"heif", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_registered: set[str] = set()


def _iso_media_kind(data: bytes) -> str | None:
    """'heif' or 'avif' for an ISO base media file of that kind (its ``ftyp`` box's brands), else None."""
    if data[4:8] != b"ftyp":
        return None
    size = int.from_bytes(data[:4], "big")
    brands = {data[i : i + 4] for i in range(8, min(max(size, 16), 64), 4)}  # major + compatible brands
    if brands & _AVIF_BRANDS:
        return "avif"
    return "heif" if brands & _HEIF_BRANDS else None


def _register_plugin(kind: str) -> bool:
    """Register the Pillow plugin for ``kind`` if it is installed and was not registered yet."""
    if kind in _registered:
        return False
    _registered.add(kind)
    try:
        module = __import__(_PLUGINS[kind][2])
    except ImportError:
        return False
    register = getattr(module, "register_heif_opener", None) if kind == "heif" else None
    if register is not None:
        register()
    return True


def _load_failure_reason(error: Exception) -> str:
    """'truncated' when the data ran out before the image did, else 'unreadable' (corrupt data)."""
    text = str(error).lower()
    if isinstance(error, EOFError) or "truncat" in text or "end of file" in text or "premature" in text:
        return "truncated"
    return "unreadable"


def _apply_exif_orientation(img: Image.Image) -> bool:
    """Rotate/flip in place as the EXIF orientation tag says; a malformed EXIF block is ignored."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            ImageOps.exif_transpose(img, in_place=True)
            return True
    except Exception:  # a broken EXIF block should not cost us an otherwise good image
        pass
    return False


#: What :func:`load_rgb` reports in ``conversions``.
CONVERSIONS = (
    "exif_rotated",
    "animated",
    "cmyk",
    "16bit",
    "palette",
    "alpha",
    "grayscale",
    "other_mode",
)


def _conversions(img: Image.Image, rotated: bool) -> list[str]:
    found = ["exif_rotated"] if rotated else []
    try:  # counting frames seeks through the file: a damaged later frame must not cost the first one
        frames = getattr(img, "n_frames", 1)
    except Exception:
        frames = 1
    if frames > 1:
        found.append("animated")
    mode = img.mode
    if mode == "CMYK":
        found.append("cmyk")
    elif mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        found.append("16bit")
    elif mode in ("P", "PA"):
        found.append("palette")
    elif mode in ("RGBA", "LA", "RGBa", "La"):
        found.append("alpha")
    elif mode in ("L", "1"):
        found.append("grayscale")
    elif mode != "RGB":
        found.append("other_mode")
    return found


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(np.asarray(img), img.mode)).convert("RGB")
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float grayscale array to uint8 by its value range.

    16-bit modes are divided by 257 (so 65535 -> 255 and 257 * v -> v exactly). Mode "I" (32-bit int, also
    what some decoders give for 16-bit files) and "F" have no fixed range, so the range is chosen from the
    maximum: values that fit 8 bits are kept, values that fit 16 bits are divided by 257, larger ones are
    scaled by 255 / max; float images with max <= 1 are taken as [0, 1]. Negative values become 0.
    """
    x = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    x = np.maximum(x, 0.0)
    peak = float(x.max()) if x.size else 0.0
    if mode in _SIXTEEN_BIT_MODES:
        scale = 1.0 / 257.0
    elif mode == "F" and peak <= 1.0:
        scale = 255.0
    elif peak <= 255.0:
        scale = 1.0
    elif peak <= 65535.0:
        scale = 1.0 / 257.0
    else:
        scale = 255.0 / peak
    return np.clip(np.rint(x * scale), 0, 255).astype(np.uint8)
