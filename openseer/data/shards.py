"""Tar shards (the WebDataset format): naming them, reading them safely, and their manifest.

A shard is a plain tar whose members are grouped into samples by key (``airplane/0000.jpg`` and
``airplane/0000.cls`` form sample ``airplane/0000``), read sequentially with ``webdataset``'s tar iterator,
so a shard can come from local disk or any fsspec URL (``s3://``, ``gs://``, ``https://``, ``memory://``).

A shard set is named by a list, a glob (``shards/*.tar``), a brace pattern (``train-{000000..000127}.tar``),
several of these joined by ``::`` (webdataset's separator), or a folder holding the ``manifest.json`` that
``openseer shard`` writes. Sample counts per shard come from that manifest (or a one-off scan when a shard
set has none): they let every process plan an epoch, and resume one, without reading any data.

Nothing is ever extracted to disk: members are read into memory, only regular files are used, and members
whose path is absolute or holds a ``..`` component are skipped and counted. A shard that is missing,
truncated or corrupt ends early with a count; it never stops a run.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from openseer.data.images import IMAGE_EXTENSIONS, DataError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "openseer-shards/1"
IMAGE_SUFFIXES = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_BRACE = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")


def _is_url(path: str) -> bool:
    return "://" in path


def is_shard_spec(path: str | os.PathLike[str] | Sequence[str]) -> bool:
    """True when ``path`` names a shard set (a list, URL, glob, brace pattern, ``::`` list or a folder with
    a shard manifest) rather than one folder, one tar archive or one file list."""
    if isinstance(path, (list, tuple)):
        return True
    p = os.fspath(path)
    if "::" in p or _is_url(p) or _BRACE.search(p) or any(c in p for c in "*?["):
        return True
    return os.path.isdir(p) and os.path.isfile(os.path.join(p, MANIFEST))


def _glob(pattern: str) -> list[str]:
    if not _is_url(pattern):
        return sorted(globlib.glob(pattern))
    import fsspec

    fs, _, _ = fsspec.get_fs_token_paths(pattern)
    protocol = pattern.split("://", 1)[0]
    return sorted(p if "://" in p else f"{protocol}://{p.lstrip('/')}" for p in fs.glob(pattern))


def expand_shards(spec: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """The shard paths/URLs a spec names, in order (globs sorted), without duplicates.

    Raises:
        DataError: the spec names no shard.
    """
    from braceexpand import braceexpand

    parts = [os.fspath(s) for s in spec] if isinstance(spec, (list, tuple)) else os.fspath(spec).split("::")
    shards: list[str] = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if not _is_url(part) and os.path.isdir(part):
            manifest = read_manifest(part)
            if manifest is None:
                raise DataError(f"folder {part} holds no {MANIFEST}; pass its shards as a glob: {part}/*.tar")
            shards += [os.path.join(part, s["name"]) for s in manifest["shards"]]
            continue
        for name in braceexpand(part):
            shards += _glob(name) if any(c in name for c in "*?[") else [name]
    unique = list(dict.fromkeys(shards))
    if not unique:
        raise DataError(f"no tar shards match {spec!r}")
    return unique


def _open(path: str):
    if _is_url(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def read_manifest(folder: str) -> dict | None:
    """The ``manifest.json`` of a shard folder (local or URL), or None when there is none."""
    path = f"{folder.rstrip('/')}/{MANIFEST}"
    try:
        with _open(path) as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "shards" in manifest else None


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


def safe_member_name(name: str) -> bool:
    """Whether a member path is relative and free of '..' (such members are skipped, never written)."""
    return not (name.startswith("/") or name.startswith("\\") or ".." in re.split(r"[/\\]", name))


def _image_member(sample: dict) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if suffix in sample:
            return suffix
    return next((k for k in sample if not k.startswith("_") and k.rsplit(".", 1)[-1] in IMAGE_SUFFIXES), None)


@dataclass
class ShardRecord:
    """One sample of a shard: its key, image bytes, label (-1 when it has none) and the image's member name
    in the tar (``key.ext`` as written there: the extension's case may differ)."""

    key: str
    ext: str
    data: bytes
    label: int = -1
    member: str = ""


@dataclass
class ShardStats:
    """What reading shards met besides good samples (counted, never raised)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n


class _TailReader:
    """A file wrapper that remembers the last 1 KiB read: tarfile's stream mode stops silently at a
    header cut short, but a complete tar ends with two zero blocks, so the tail tells the two apart."""

    def __init__(self, f) -> None:
        self.f, self.tail = f, b""

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.tail = (self.tail + data)[-1024:]
        return data

    def ends_cleanly(self) -> bool:
        while self.read(1 << 20):  # consume any rest (zero padding after the end marker)
            pass
        return len(self.tail) == 1024 and not any(self.tail)


def _group(files: Iterator[dict], stats: ShardStats) -> Iterator[dict]:
    """Consecutive members with the same key form a sample (webdataset's convention; a repeated member
    is counted and the first copy kept, where webdataset's ``group_by_keys`` would raise)."""
    from webdataset.tariterators import base_plus_ext

    current: dict | None = None
    for f in files:
        key, suffix = base_plus_ext(f["fname"])
        if key is None:
            stats.add("no_key")
            continue
        suffix = suffix.lower()
        if current is None or key != current["__key__"]:
            if current is not None:
                yield current
            current = {"__key__": key, "__names__": {}}
        if suffix in current:
            stats.add("duplicate_member")
            continue
        current[suffix] = f["data"]
        current["__names__"][suffix] = f["fname"]
    if current is not None:
        yield current


def iter_shard(path: str, stats: ShardStats | None = None) -> Iterator[ShardRecord]:
    """The samples of one shard that hold an image, in tar order; damage ends the shard with a count.

    Counted reasons: ``unsafe_member`` (absolute or '..' path), ``no_image`` (a sample key without an image
    member), ``shard_unreadable`` (cannot be opened), ``shard_truncated`` (the tar breaks off or is corrupt).
    """
    from webdataset.tariterators import tar_file_iterator

    stats = stats if stats is not None else ShardStats()

    def select(name: str) -> bool:
        if safe_member_name(name):
            return True
        stats.add("unsafe_member")
        return False

    try:
        stream = _open(path)
    except (OSError, ValueError) as e:
        stats.add("shard_unreadable")

        logging.getLogger("openseer").warning("cannot open shard %s: %s", path, e)
        return
    with stream:
        tail = _TailReader(stream)
        try:
            for sample in _group(tar_file_iterator(tail, select_files=select), stats):
                ext = _image_member(sample)
                if ext is None:
                    stats.add("no_image")
                    continue
                label = -1
                if "cls" in sample:
                    try:
                        label = int(sample["cls"].decode().strip())
                    except (UnicodeDecodeError, ValueError):
                        stats.add("bad_label")
                yield ShardRecord(sample["__key__"], ext, sample[ext], label, sample["__names__"][ext])
            if not tail.ends_cleanly():
                raise tarfile.ReadError("no end-of-archive marker (the file is cut short)")
        except (tarfile.TarError, OSError, EOFError, ValueError, KeyError) as e:
            stats.add("shard_truncated")

            logging.getLogger("openseer").warning("shard %s is truncated or corrupt: %s", path, e)


def file_sha256(path: str) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex digest) of a local or fsspec file, read in 1 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    with _open(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class ShardSet:
    """An ordered list of shards with their sample counts.

    Counts come from each shard folder's manifest; shards no manifest lists are scanned once (their bytes
    are read, not decoded). ``offsets[i]`` is the global id of shard i's first sample, so a sample's id,
    ``offsets[shard] + position``, is stable whatever the rank, worker or epoch.
    """

    def __init__(self, spec: str | os.PathLike[str] | Sequence[str]) -> None:
        self.spec = spec if isinstance(spec, str) else str(spec)
        self.urls = expand_shards(spec)
        manifests: dict[str, dict | None] = {}
        counts: list[int] = []
        self.classes: list[str] = []
        for url in self.urls:
            folder = _parent(url)
            if folder not in manifests:
                manifests[folder] = read_manifest(folder)
                if manifests[folder] and not self.classes:
                    self.classes = list(manifests[folder].get("classes", []))
            listed = {s["name"]: s for s in (manifests[folder] or {}).get("shards", [])}
            entry = listed.get(url.rsplit("/", 1)[-1])
            counts.append(int(entry["count"]) if entry else sum(1 for _ in iter_shard(url)))
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.urls)

    @property
    def num_samples(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        return f"ShardSet({self.spec!r}, {len(self)} shards, {self.num_samples} samples)"


def verify_shards(spec: str | os.PathLike[str]) -> dict:
    """Re-read every shard of a manifest folder: counts, sizes and sha256 against the manifest.

    Returns:
        {"ok": bool, "problems": [str, ...], "samples": int}
    """
    folder = os.fspath(spec)
    manifest = read_manifest(folder)
    if manifest is None:
        raise DataError(f"{folder} holds no {MANIFEST}")
    problems, total = [], 0
    for entry in manifest["shards"]:
        path = f"{folder.rstrip('/')}/{entry['name']}"
        stats = ShardStats()
        n = sum(1 for _ in iter_shard(path, stats))
        total += n
        size, sha = file_sha256(path) if not stats.counts.get("shard_unreadable") else (0, "")
        if n != entry["count"]:
            problems.append(f"{entry['name']}: {n} samples, manifest says {entry['count']}")
        if sha != entry["sha256"] or size != entry["bytes"]:
            problems.append(f"{entry['name']}: size/sha256 differ from the manifest")
        if stats.counts:
            problems.append(f"{entry['name']}: {stats.counts}")
    if total != manifest["total"]:
        problems.append(f"{total} samples in all, manifest says {manifest['total']}")
    return {"ok": not problems, "problems": problems, "samples": total}
