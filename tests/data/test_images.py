"""load_rgb on a corpus of corrupt and unusual images, generated with PIL."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from openseer.data.images import BadImage, load_rgb


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int64)


def noise_rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---- bad files -------------------------------------------------------------------------------------------


def test_zero_bytes_is_empty():
    with pytest.raises(BadImage) as e:
        load_rgb(b"")
    assert e.value.reason == "empty"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_cut_file_is_truncated(fmt):
    data = encode(noise_rgb(64, 64), fmt)
    with pytest.raises(BadImage) as e:
        load_rgb(data[: len(data) // 2])
    assert e.value.reason == "truncated"


def test_text_named_jpg_is_unreadable():
    with pytest.raises(BadImage) as e:
        load_rgb(b"this is a text file with a .jpg name\n" * 10)
    assert e.value.reason == "unreadable"


def test_decompression_bomb_is_too_large(monkeypatch):
    data = encode(Image.new("RGB", (64, 64)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    # 4096 pixels > 2 * limit: PIL raises DecompressionBombError.
    with pytest.raises(BadImage) as e:
        load_rgb(data)
    assert e.value.reason == "too_large"
    # 1600 pixels, between the limit and twice it: PIL only warns; load_rgb turns the warning into an error.
    with pytest.raises(BadImage) as e:
        load_rgb(encode(Image.new("RGB", (40, 40)), "PNG"))
    assert e.value.reason == "too_large"


def test_max_image_pixels_left_at_default():
    load_rgb(encode(Image.new("RGB", (8, 8)), "PNG"))
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)


# ---- odd but valid images --------------------------------------------------------------------------------


def test_rgb_jpeg_roundtrip_and_tiny_image():
    img = load_rgb(encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"))
    assert img.size == (1, 1) and pixels(img)[0, 0].tolist() == [10, 200, 30]


def test_cmyk_jpeg():
    red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    img = load_rgb(encode(red, "JPEG", quality=95))
    assert np.abs(pixels(img) - np.array([255, 0, 0])).max() <= 8


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 1000, 257 * 100], [30000, 65535, 512, 12345]], dtype=np.uint16)
    src = Image.fromarray(values)
    assert src.mode == "I;16"
    img = load_rgb(encode(src, "PNG"))
    expected = np.rint(values / 257.0).astype(np.int64)
    got = pixels(img)
    assert np.array_equal(got[..., 0], expected)
    assert np.array_equal(got[..., 0], got[..., 2])
    assert got[0, 2, 0] == 4  # 1000 / 257, where clipping to 8 bits would give 255


def test_thirty_two_bit_and_float_images():
    wide = np.array([[0, 1000, 70000, 140000]], dtype=np.int32)  # beyond 16 bits: scaled by 255 / max
    img = load_rgb(encode(Image.fromarray(wide, "I"), "TIFF"))
    assert pixels(img)[0, :, 0].tolist() == np.rint(wide[0] * 255 / 140000).astype(int).tolist()
    unit = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)  # floats in [0, 1]
    img = load_rgb(encode(Image.fromarray(unit, "F"), "TIFF"))
    assert pixels(img)[0, :, 1].tolist() == [0, 64, 255]


def test_grayscale_and_bilevel():
    gray = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))
    assert pixels(load_rgb(encode(gray, "PNG")))[0].tolist() == [[0, 0, 0], [77, 77, 77], [255, 255, 255]]
    bilevel = Image.new("1", (4, 4), 1)
    assert (pixels(load_rgb(encode(bilevel, "PNG"))) == 255).all()


def test_rgba_composited_on_white():
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (200, 10, 10, 255)  # opaque red
    arr[0, 1] = (0, 0, 0, 0)  # fully transparent
    arr[1, 0] = (0, 0, 0, 128)  # half-transparent black
    img = load_rgb(encode(Image.fromarray(arr, "RGBA"), "PNG"))
    got = pixels(img)
    assert got[0, 0].tolist() == [200, 10, 10]
    assert got[0, 1].tolist() == [255, 255, 255]
    assert np.abs(got[1, 0] - 127).max() <= 1
    la = Image.new("LA", (2, 2), (50, 0))
    assert (pixels(load_rgb(encode(la, "PNG"))) == 255).all()


def test_palette_with_transparency():
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    img = load_rgb(encode(pal, "PNG", transparency=0))
    got = pixels(img)
    assert got[0, 0].tolist() == [0, 255, 0]
    assert got[1, 1].tolist() == [255, 255, 255]  # index 0 is transparent
    plain = load_rgb(encode(pal, "PNG"))
    assert pixels(plain)[1, 1].tolist() == [0, 0, 0]


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    got = pixels(load_rgb(data))
    assert np.abs(got - np.array([255, 0, 0])).max() <= 2


def test_exif_orientation_6_is_applied():
    # 40 wide x 20 high: left quarter red, the rest blue, bottom row stripe green.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:] = (0, 0, 255)
    arr[15:, :] = (0, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif)
    img = load_rgb(data)
    assert img.size == (20, 40)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # decoded, orientation not applied
    got = pixels(img)
    assert np.array_equal(got, np.rot90(stored, k=-1))  # clockwise, computed independently with numpy
    assert got[2, 10].tolist()[0] > 200  # the red quarter is now on top
    assert got[30, 2].tolist()[1] > 200  # the green bottom stripe is now on the left
