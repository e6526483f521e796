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
    from webdataset import TarWriter

    limit = parse_size(max_size)
    if max_count < 1 or limit < 1:
        raise DataError("--max-count and --max-size must be positive")
    if labelled is None:
        try:
            source = open_source(data, labelled=True)
        except DataError:
            source = open_source(data)
    else:
        source = open_source(data, labelled=labelled)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST).exists() or any(out_dir.glob(f"{prefix}-*.tar")):
        raise DataError(f"{out_dir} already holds shards; choose an empty --out")
    shards: list[dict] = []
    skipped: dict[str, int] = {}
    resized = 0
    writer, tmp, count, size = None, None, 0, 0

    def close() -> None:
        nonlocal writer
        if writer is None:
            return
        writer.close()
        name = f"{prefix}-{len(shards):06d}.tar"
        os.replace(tmp, out_dir / name)
        nbytes, sha = file_sha256(str(out_dir / name))
        shards.append({"name": name, "count": count, "bytes": nbytes, "sha256": sha})
        writer = None

    started = time.time()
    bar = tqdm(total=len(source), desc="shard", unit="img", disable=not progress, dynamic_ncols=True)
    for i in range(len(source)):
        bar.update(1)
        try:
            raw = source.read(i)
            img = load_rgb(raw)
            payload, ext, shrunk = _encode(raw, img, resize_longer, quality)
        except BadImage as e:
            skipped[e.reason] = skipped.get(e.reason, 0) + 1
            continue
        except OSError:
            skipped["unreadable"] = skipped.get("unreadable", 0) + 1
            continue
        resized += shrunk
        path = source.name(i).encode("utf-8", "surrogateescape")
        sample = {"__key__": f"{i:09d}", ext: payload, "path": path}
        if source.classes:
            sample["cls"] = str(source.label(i)).encode()
        entry = len(payload) + 3 * 512 + 1024  # data + headers + padding, an upper bound
        if writer is not None and (count >= max_count or size + entry > limit):
            close()
        if writer is None:
            tmp = out_dir / f".{prefix}-{len(shards):06d}.tar.partial"
            writer, count, size = TarWriter(str(tmp), encoder=False, mtime=0, compress=False), 0, 0
        writer.write(sample)
        count, size = count + 1, size + entry
        bar.set_postfix(shards=len(shards) + 1, skipped=sum(skipped.values()), refresh=False)
    close()
    bar.close()
    written = sum(s["count"] for s in shards)
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
        "pattern": f"{prefix}-{{000000..{len(shards) - 1:06d}}}.tar" if shards else "",
        "bytes": sum(s["bytes"] for s in shards),
        "seconds": round(time.time() - started, 2),
        "shards": shards,
    }
    atomic_write_json(out_dir / MANIFEST, manifest, indent=1)
    if verify:
        result = verify_shards(str(out_dir))
        if not result["ok"]:
            raise DataError(f"verification of {out_dir} failed: {'; '.join(result['problems'][:5])}")
    return manifest
