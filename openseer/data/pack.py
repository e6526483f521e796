"""``openseer shard``: pack a folder, tar or file list of images into tar shards with a manifest.

Each image becomes one sample ``<9-digit index>.<ext>`` (its original bytes, or a re-encoded JPEG when
``resize_longer`` shrinks it), plus ``.cls`` (the label, when the data is labelled) and ``.path`` (its path in
the source). Every image is decoded once while packing: undecodable ones are left out and counted per reason
in the manifest, so that the written count plus the skipped count is always the source's count (checked).
Shards are written under a temporary name and renamed when complete; the manifest, written last, lists each
shard's sample count, size and sha256, the classes, and the totals.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from openseer.data.images import BadImage, DataError, load_rgb
from openseer.data.lists import open_source
from openseer.data.shards import MANIFEST, MANIFEST_FORMAT, file_sha256, verify_shards
from openseer.io import atomic_write_json

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(text: str | int) -> int:
    """'1GB' -> 10**9, '512MiB' -> 2**29, '1000' -> 1000."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise DataError(f"size {text!r} is not understood; use e.g. 500MB, 1GB or 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _encode(data: bytes, img: Image.Image, resize_longer: int, quality: int) -> tuple[bytes, str, bool]:
    """(bytes, extension, resized): the original file unless it must shrink."""
    fmt = (Image.open(io.BytesIO(data)).format or "").lower()
    if resize_longer and max(img.size) > resize_longer:
        scale = resize_longer / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        buf = io.BytesIO()
        img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0).save(buf, "JPEG", quality=quality)
        return buf.getvalue(), "jpg", True
    ext = {"jpeg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp", "tiff": "tif"}.get(fmt)
    if ext is None:  # a format the readers may not expect (e.g. GIF): store the decoded RGB losslessly
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue(), "png", False
    return data, ext, False


class _RollingShards:
    """Writes samples into ``out_dir/<prefix>-NNNNNN.tar``, starting a new shard before one would pass
    ``max_count`` samples or ``limit`` bytes; each shard is written as ``.partial`` and renamed when closed."""

    def __init__(self, out_dir: Path, prefix: str, max_count: int, limit: int) -> None:
        from webdataset import TarWriter  # an optional dependency (the `shards` extra), needed only here

        self.tar_writer = TarWriter
        self.out_dir, self.prefix, self.max_count, self.limit = out_dir, prefix, max_count, limit
        self.shards: list[dict] = []  # the manifest's rows of the closed shards
        self.writer, self.tmp, self.count, self.size = None, None, 0, 0

    def write(self, sample: dict, payload_bytes: int) -> None:
        """Add ``sample`` (its image ``payload_bytes`` long) to the open shard, or to a new one."""
        entry = payload_bytes + 3 * 512 + 1024  # data + headers + padding, an upper bound
        if self.writer is not None and (self.count >= self.max_count or self.size + entry > self.limit):
            self.close()
        if self.writer is None:
            self.tmp = self.out_dir / f".{self.prefix}-{len(self.shards):06d}.tar.partial"
            self.writer, self.count, self.size = (
                self.tar_writer(str(self.tmp), encoder=False, mtime=0, compress=False),
                0,
                0,
            )
        self.writer.write(sample)
        self.count, self.size = self.count + 1, self.size + entry

    def close(self) -> None:
        """Finish the open shard (if any): rename it and record its count, size and sha256."""
        if self.writer is None:
            return
        self.writer.close()
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        os.replace(self.tmp, self.out_dir / name)
        nbytes, sha = file_sha256(str(self.out_dir / name))
        self.shards.append({"name": name, "count": self.count, "bytes": nbytes, "sha256": sha})
        self.writer = None


def _open_for_packing(data: str | os.PathLike[str], labelled: bool | None):
    """The source to pack: labelled when asked, or (``labelled=None``) when its layout allows it."""
    if labelled is not None:
        return open_source(data, labelled=labelled)
    try:
        return open_source(data, labelled=True)
    except DataError:
        return open_source(data)


def _sample(source, i: int, resize_longer: int, quality: int) -> tuple[dict, int, bool]:
    """(the tar sample of image ``i``, its image's size in bytes, whether it was shrunk); raises BadImage or
    OSError when the image is unreadable."""
    raw = source.read(i)
    payload, ext, shrunk = _encode(raw, load_rgb(raw), resize_longer, quality)
    sample = {"__key__": f"{i:09d}", ext: payload, "path": source.name(i).encode("utf-8", "surrogateescape")}
    if source.classes:
        sample["cls"] = str(source.label(i)).encode()
    return sample, len(payload), shrunk


def write_shards(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    max_size: int | str = "1GB",
    max_count: int = 100_000,
    resize_longer: int = 0,
    quality: int = 90,
    labelled: bool | None = None,
    prefix: str = "shard",
    verify: bool = True,
    progress: bool = True,
) -> dict:
    """Pack ``data`` (folder, tar or file list) into ``out/<prefix>-NNNNNN.tar`` + ``out/manifest.json``.

    Args:
        max_size: start a new shard before one would exceed this many bytes (e.g. "1GB").
        max_count: at most this many images per shard.
        resize_longer: shrink images whose longer side exceeds this (re-encoded as JPEG); 0 keeps them.
        quality: JPEG quality for re-encoded images.
        labelled: labels from the first folder of each path; None: when the layout allows it.
        verify: re-read every shard after writing and compare counts and checksums with the manifest.

    Returns:
        The manifest.
    """
    limit = parse_size(max_size)
    if max_count < 1 or limit < 1:
        raise DataError("--max-count and --max-size must be positive")
    source = _open_for_packing(data, labelled)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST).exists() or any(out_dir.glob(f"{prefix}-*.tar")):
        raise DataError(f"{out_dir} already holds shards; choose an empty --out")
    shards = _RollingShards(out_dir, prefix, max_count, limit)
    skipped: dict[str, int] = {}
    resized = 0
    started = time.time()
    bar = tqdm(total=len(source), desc="shard", unit="img", disable=not progress, dynamic_ncols=True)
    for i in range(len(source)):
        bar.update(1)
        try:
            sample, payload_bytes, shrunk = _sample(source, i, resize_longer, quality)
        except (BadImage, OSError) as e:
            reason = e.reason if isinstance(e, BadImage) else "unreadable"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        resized += shrunk
        shards.write(sample, payload_bytes)
        bar.set_postfix(shards=len(shards.shards) + 1, skipped=sum(skipped.values()), refresh=False)
    shards.close()
    bar.close()
    written = sum(s["count"] for s in shards.shards)
    if written + sum(skipped.values()) != len(source):
        raise DataError(f"internal error: {written} written + {skipped} skipped != {len(source)} images")
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": os.fspath(data),
        "total": written,
        "source_images": len(source),
        "skipped": skipped,
        "resized": resized,
        "classes": source.classes,
        "pattern": f"{prefix}-{{000000..{len(shards.shards) - 1:06d}}}.tar" if shards.shards else "",
        "bytes": sum(s["bytes"] for s in shards.shards),
        "seconds": round(time.time() - started, 2),
        "shards": shards.shards,
    }
    atomic_write_json(out_dir / MANIFEST, manifest, indent=1)
    if verify:
        result = verify_shards(str(out_dir))
        if not result["ok"]:
            raise DataError(f"verification of {out_dir} failed: {'; '.join(result['problems'][:5])}")
    return manifest
