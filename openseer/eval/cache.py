"""A feature cache shared by every frozen-feature evaluation (kNN, linear probes, low-shot).

Extracting features is the only expensive part of a frozen evaluation (dinov2 ``eval/``, VISSL
``extract_features``): a grid of linear probes or twenty low-shot subsets over 50,000 cached features takes
seconds. A cache file holds the features with their labels, image names and class names, plus the *key*
they were made from:

* the checkpoint: its resolved file's size, mtime and SHA-256 of its content (and the backbone spec beside
  an exported ``backbone.safetensors``);
* the data: the source path, its listing (names, labels, classes) and, per file, its size and mtime (a
  folder or a file list; the archive's for a list's ``ARCHIVE::MEMBER`` lines) or the archive's size and mtime
  (a tar);
* the transform and extraction settings: image size, crop ratio, mean/std, layer, precision.

Any change gives another key, so a stale file is never reused: it is recomputed and replaced. Files are
written atomically (temporary file + rename) and read with ``torch.load(weights_only=True)``, so a cache
file cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from openseer.checkpoint import BACKBONE_SPEC
from openseer.data import open_source
from openseer.data.tars import split_entry
from openseer.errors import CheckpointError, DataError
from openseer.eval.features import Features, feature_extractor, source_features
from openseer.eval.knn import check_label_sets
from openseer.eval.settings import FROM_RUN, EvalSettings
from openseer.io import atomic_write
from openseer.weights.load import load_backbone, resolve_source
from openseer.weights.sources import source_path

CACHE_FORMAT = "openseer-features/1"


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_fingerprint(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a checkpoint's weights: resolved path, size, mtime and content hash (a timm tag: itself)."""
    if str(checkpoint).startswith("timm:"):
        return {"source": str(checkpoint)}
    path = resolve_source(checkpoint)
    st = path.stat()
    out = {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": _sha256_file(path),
    }
    spec = path.with_name(BACKBONE_SPEC)
    if path.suffix == ".safetensors" and spec.is_file():
        out["spec"] = spec.read_text()
    return out


def source_fingerprint(source) -> str:
    """SHA-256 of a labelled source's listing and of its files' sizes and mtimes (see module docstring)."""
    digest = hashlib.sha256()
    root = os.path.abspath(source.root)
    digest.update(json.dumps({"root": root, "classes": list(source.classes), "n": len(source)}).encode())
    is_dir = os.path.isdir(root)
    if not is_dir and os.path.isfile(root):
        st = os.stat(root)
        digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    archives: dict[str, str] = {}  # a file list's archives, each stat'ed once
    for i in range(len(source)):
        name = source.name(i)
        digest.update(f"{name}\0{source.label(i)}\0".encode("utf-8", "surrogateescape"))
        if not is_dir:
            continue
        member = split_entry(name)
        if member is None:
            digest.update(_stamp(os.path.join(root, name)).encode())
            continue
        archive = os.path.join(root, member[0])
        if archive not in archives:
            archives[archive] = _stamp(archive)
        digest.update(archives[archive].encode())
    return digest.hexdigest()


def _stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing\n"
    return f"{st.st_size}:{st.st_mtime_ns}\n"


def cache_key(checkpoint_fp: dict[str, Any], data_fp: str, settings: dict[str, Any]) -> str:
    """One hex key of everything the features depend on."""
    blob = json.dumps({"checkpoint": checkpoint_fp, "data": data_fp, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_features(path: str | os.PathLike[str], features: Features, key: str, meta: dict[str, Any]) -> None:
    """Write features atomically, with their key and JSON-able metadata."""
    state = {
        "format": CACHE_FORMAT,
        "key": key,
        "features": features.features.contiguous(),
        "labels": features.labels,
        "names": list(features.names) if features.names is not None else [],
        "classes": list(features.classes or []),
        "num_failed": int(features.num_failed),
        "meta": json.dumps(meta),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_features(path: str | os.PathLike[str]) -> tuple[Features, str, dict[str, Any]]:
    """Read a features file (``weights_only=True``); returns (features, key, metadata).

    Raises:
        CheckpointError: the file is missing, unreadable or not an openseer features file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"features file {path} does not exist (write it with `openseer embed`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read features file {path}: {first}") from None
    if not isinstance(state, dict) or state.get("format") != CACHE_FORMAT:
        raise CheckpointError(f"{path} is not an openseer features file ({CACHE_FORMAT})")
    feats = Features(
        features=state["features"],
        labels=state["labels"],
        names=list(state["names"]) or None,
        num_failed=int(state["num_failed"]),
        classes=list(state["classes"]) or None,
    )
    return feats, state["key"], json.loads(state["meta"])


def default_cache_dir(checkpoint: str | os.PathLike[str]) -> Path:
    """``RUN_DIR/features`` for a run dir, else a ``features`` folder beside the checkpoint file (a timm tag:
    ``./features``)."""
    path = source_path(checkpoint) or Path("timm")
    return path / "features" if path.is_dir() else path.parent / "features"


def cached_features(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    settings: EvalSettings = FROM_RUN,
    out: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    layer: str = "pooled",
    backbone: torch.nn.Module | None = None,
    config: dict[str, Any] | None = None,
) -> tuple[Features, dict[str, Any]]:
    """Features of labelled ``data`` under ``checkpoint``: read from the cache when the key matches,
    otherwise extracted once and written (to ``out``, or to ``cache_dir``/``<data>-<layer>-<key>.pt``).

    Args:
        checkpoint: run dir, ``backbone.safetensors`` or training checkpoint.
        data: labelled ImageFolder folder or tar.
        settings: image size, crop, batch size, workers, device (what is left at 0/auto comes from the run).
        out: exact file to write/reuse; cache_dir: folder of cache files (default `default_cache_dir`).
        layer: ``"pooled"`` or a stage name/index (`openseer.eval.features.feature_extractor`).
        backbone, config: an already loaded backbone and its config (skips reloading the checkpoint).

    Returns:
        (features with ``classes`` set, metadata dict with ``key``, ``cached`` (bool), ``path``, ``seconds``).
    """
    started = time.perf_counter()
    source = open_source(data, labelled=True)
    ckpt_fp = checkpoint_fingerprint(checkpoint)
    if backbone is None:
        backbone, config = load_backbone(checkpoint)
    run = settings.resolve(config)
    fingerprint = {**run.fingerprint(), "layer": layer or "pooled"}
    key = cache_key(ckpt_fp, source_fingerprint(source), fingerprint)
    if out is None:
        stem = Path(str(data).rstrip("/")).name.split(".")[0] or "data"
        out = Path(cache_dir or default_cache_dir(checkpoint)) / f"{stem}-{fingerprint['layer']}-{key[:16]}.pt"
    out = Path(out)
    meta = {
        "key": key,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": ckpt_fp["sha256"],
        "data": str(data),
        "settings": fingerprint,
    }
    if out.is_file():
        try:
            feats, old_key, old_meta = load_features(out)
        except CheckpointError:
            old_key = None
        if old_key == key:
            return feats, {**old_meta, "cached": True, "path": str(out), "seconds": 0.0}
    feats = source_features(
        feature_extractor(backbone, fingerprint["layer"]),
        source,
        run.transform(),
        batch_size=run.batch_size,
        num_workers=run.num_workers,
        device=run.device,
        precision=run.precision,
        channels_last=run.channels_last,
    )
    meta.update(num_images=len(feats), num_failed=feats.num_failed, feature_dim=feats.dim)
    meta["extract_seconds"] = round(time.perf_counter() - started, 3)
    save_features(out, feats, key, meta)
    return feats, {**meta, "cached": False, "path": str(out), "seconds": meta["extract_seconds"]}


def check_pair(train: Features, test: Features, train_meta: dict | None = None, test_meta: dict | None = None):
    """Check that cached train/test features can be scored together.

    Raises:
        openseer.data.DataError: fewer than 2 classes, different class sets, or a train class left without
            any image (e.g. an empty class folder in the listing, or all of its images undecodable).
        CheckpointError: the two files come from different checkpoints, layers or transforms.
    """
    if train.classes is None or test.classes is None:
        raise DataError("features carry no class names; extract them with `openseer embed`")
    check_label_sets(train.classes, test.classes)
    counts = torch.bincount(train.labels, minlength=len(train.classes))
    empty = [train.classes[c] for c in range(len(train.classes)) if counts[c] == 0]
    if empty:
        raise DataError(f"train class(es) without any usable image: {', '.join(empty[:5])}")
    if train.dim != test.dim:
        raise CheckpointError(f"train features have dimension {train.dim}, test features {test.dim}")
    if train_meta and test_meta:
        for field in ("checkpoint_sha256", "settings"):
            if train_meta.get(field) != test_meta.get(field):
                raise CheckpointError(
                    f"train and test features were extracted with different {field.split('_')[0]}s "
                    f"({train_meta.get('checkpoint')} vs {test_meta.get('checkpoint')}); re-embed both "
                    "with the same checkpoint and settings"
                )
