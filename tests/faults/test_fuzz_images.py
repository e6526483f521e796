"""Fuzzed images: random bytes and mutated real JPEG/PNG/WebP/TIFF/GIF files never crash the decoder; each is
an RGB image or a BadImage with a known reason, and the data loader counts every skip by that reason."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from openseer.config import load_config
from openseer.data import BadImage, PretrainDataset, load_rgb, open_source
from openseer.data.images import BAD_IMAGE_REASONS
from openseer.data.transforms import MultiCropTransform
from tests.faults.common import fuzz_settings
from tests.helpers import TINY_OVERRIDES

FAST = fuzz_settings(30)


def _real_file(fmt: str, mode: str, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    kwargs = {"quality": 80} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "GIF":
        img = img.convert("P")
        frames = [img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
    else:
        img.save(buf, fmt, **kwargs)
    return buf.getvalue()


FORMATS = {
    "JPEG": ("RGB", "L", "CMYK"),
    "PNG": ("RGB", "RGBA", "L", "P", "I;16"),
    "WEBP": ("RGB", "RGBA"),
    "TIFF": ("RGB", "CMYK", "I;16", "F", "1"),
    "GIF": ("RGB",),
}
REAL = {f"{fmt}-{mode}": _real_file(fmt, mode, k) for k, (fmt, modes) in enumerate(FORMATS.items()) for mode in modes}


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(REAL[draw(st.sampled_from(sorted(REAL)))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


MAGICS = [
    b"",
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"II*\x00",
    b"MM\x00*",
    b"GIF89a",
    b"BM",
    b"\x00\x00\x00\x18ftypheic",
    b"\x00\x00\x00\x18ftypavif",
]


def _classify(data: bytes) -> str | None:
    """None for a usable image, else the skip reason; anything else raised fails the test."""
    try:
        img = load_rgb(data)
    except BadImage as e:
        assert e.reason in BAD_IMAGE_REASONS
        return e.reason
    assert img.mode == "RGB" and min(img.size) >= 1
    np.asarray(img)  # the pixels are really there
    return None


@FAST
@given(st.one_of(mutated(), st.builds(lambda m, b: m + b, st.sampled_from(MAGICS), st.binary(max_size=600))))
def test_fuzzed_bytes_decode_or_give_a_known_reason(data):
    _classify(data)


@fuzz_settings(8)
@given(st.lists(mutated(), min_size=3, max_size=10))
def test_the_loader_counts_each_skip_by_its_reason(tmp_path_factory, files):
    """Through a folder and PretrainDataset, the skips reported equal, reason by reason, what load_rgb says
    about each file on its own."""
    folder = tmp_path_factory.mktemp("fuzz")
    good = REAL["PNG-RGB"]
    (folder / "zz_good.png").write_bytes(good)  # at least one decodable image, last in the order
    for k, data in enumerate(files):
        (folder / f"f{k:02d}.{['jpg', 'png', 'webp', 'tif', 'gif'][k % 5]}").write_bytes(data)
    expected = Counter(r for r in map(_classify, files) if r is not None)
    source = open_source(folder)
    cfg = load_config("demo", TINY_OVERRIDES)
    dataset = PretrainDataset(source, MultiCropTransform(cfg.aug))
    reported: dict[str, str] = {}
    for i in range(len(source)):
        crops, used, skipped, _ = dataset[i]
        assert len(crops) == 4 and all(c.isfinite().all() for c in crops)
        reported.update(skipped)
    assert Counter(reported.values()) == expected
