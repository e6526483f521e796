"""Pool embeddings for curation: written once, memory-mapped, resumable, split over torchrun processes.

A pool may hold millions of images, so its embeddings never live in one process's memory: they go straight
into ``.npy`` files opened with ``numpy.lib.format.open_memmap`` in ``DIR/embeddings/<name>/``:

* ``vectors.npy`` (N, D) float16 or float32, L2-normalised (zero rows for images that could not be decoded);
* ``ok.npy`` (N,) bool - decoded and embedded; ``digests.npy`` (N, 16) uint8 - BLAKE2b-128 of the file's
  bytes (exact duplicates); ``sizes.npy`` (N,) int64 - the file's size in bytes (-1: unreadable);
* ``files.txt`` - the pool's image names in row order; ``meta.json`` - what the rows were made from (the same
  key as `openseer.eval.cache`: checkpoint, listing with sizes and mtimes, transform settings);
* ``done.npy`` (chunks,) uint8 - which chunks of ``chunk`` rows are complete. A chunk's rows are flushed
  before its flag, so after a crash or a SIGKILL the same command computes only the missing chunks.

Under torchrun, chunk c belongs to process ``c % world_size``; every process writes its own rows of the same
files (a shared folder), like `openseer.eval` splits nothing but reuses the same frozen extraction
(`openseer.eval.features.extract_features`) and the same cache key (`openseer.eval.cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from openseer import dist
from openseer.data import BadImage, LabelledDataset
from openseer.data.sources import ImageSource, SubsetSource
from openseer.errors import DataError
from openseer.eval.cache import cache_key, checkpoint_fingerprint, source_fingerprint
from openseer.eval.features import extract_features
from openseer.eval.settings import ResolvedEval
from openseer.io import atomic_write_json, atomic_write_text

EMBED_FORMAT = "openseer-curate-embeddings/1"
DTYPES = ("float16", "float32")


@dataclass
class Embeddings:
    """The memory-mapped embeddings of one image source (module docstring)."""

    folder: Path
    vectors: np.ndarray
    ok: np.ndarray
    digests: np.ndarray
    sizes: np.ndarray
    names: list[str]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.names)


class _Positions(SubsetSource):
    """A chunk of a source whose image names are their positions in the chunk, so that the names
    `extract_features` returns say which images it could decode."""

    def name(self, i: int) -> str:
        return str(self._check(i))


def embedding_key(model: str, source: ImageSource, run: ResolvedEval, layer: str) -> str:
    """The key of `openseer.eval.cache` for these embeddings (checkpoint, listing, transform, layer)."""
    return cache_key(checkpoint_fingerprint(model), source_fingerprint(source), {**run.fingerprint(), "layer": layer})


def _open(folder: Path, n: int, dim: int, dtype: str, chunk: int, mode: str) -> dict[str, np.ndarray]:
    shapes = {
        "vectors": ((n, dim), dtype),
        "ok": ((n,), "bool"),
        "digests": ((n, 16), "uint8"),
        "sizes": ((n,), "int64"),
        "done": ((-(-n // chunk),), "uint8"),
    }
    fmt = np.lib.format
    return {k: fmt.open_memmap(folder / f"{k}.npy", mode=mode, dtype=d, shape=s) for k, (s, d) in shapes.items()}


def _prepare(folder: Path, meta: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
    """Reuse the files of a run with the same meta (resume), or create them (rank 0; others wait)."""
    old = folder / "meta.json"
    same = old.is_file() and json.loads(old.read_text()) == meta and (folder / "done.npy").is_file()
    if dist.is_main() and not same:
        folder.mkdir(parents=True, exist_ok=True)
        old.unlink(missing_ok=True)
        _open(folder, meta["n"], meta["dim"], meta["dtype"], meta["chunk"], "w+")
        atomic_write_text(folder / "files.txt", "".join(f"{name}\n" for name in names))
        atomic_write_json(folder / "meta.json", meta)
    if dist.is_initialized():
        torch.distributed.barrier()
    return _open(folder, meta["n"], meta["dim"], meta["dtype"], meta["chunk"], "r+")


def _hash_chunk(source: ImageSource, rows: range, arrays: dict[str, np.ndarray]) -> None:
    for i in rows:
        try:
            data = source.read(i)
        except (BadImage, OSError):
            arrays["sizes"][i] = -1
            continue
        arrays["digests"][i] = np.frombuffer(hashlib.blake2b(data, digest_size=16).digest(), dtype=np.uint8)
        arrays["sizes"][i] = len(data)


def _embed_chunk(extractor: nn.Module, source: ImageSource, rows: range, run: ResolvedEval, arrays) -> None:
    chunk = _Positions(source, np.arange(rows.start, rows.stop, dtype=np.int64))
    feats = extract_features(
        extractor,
        LabelledDataset(chunk, run.transform(), image_size=run.image_size),
        batch_size=run.batch_size,
        num_workers=run.num_workers,
        device=run.device,
        precision=run.precision,
        channels_last=run.channels_last,
    )
    if len(feats):
        kept = rows.start + np.array([int(p) for p in feats.names], dtype=np.int64)
        unit = torch.nn.functional.normalize(feats.features, dim=1).numpy()
        arrays["vectors"][kept] = unit.astype(arrays["vectors"].dtype)
        arrays["ok"][kept] = True


def _feature_dim(extractor: nn.Module, run: ResolvedEval) -> int:
    was = extractor.training
    extractor.eval()
    with torch.no_grad():
        out = extractor(torch.zeros(2, 3, run.image_size, run.image_size))
    extractor.train(was)
    return int(out.shape[1])


def embed_source(
    source: ImageSource,
    extractor: nn.Module,
    run: ResolvedEval,
    folder: str | os.PathLike[str],
    key: str,
    dtype: str = "float16",
    chunk: int = 4096,
    progress: bool = True,
) -> Embeddings:
    """Embed every image of ``source`` into ``folder`` (or finish a partial run with the same ``key``).

    Args:
        source: any `openseer.data.open_source` result (labels are ignored).
        extractor: frozen backbone returning (B, D) features (`openseer.eval.features.feature_extractor`).
        run: resolved evaluation settings (transform, batch size, device, precision).
        key: what the rows depend on (`embedding_key`); another key starts the files afresh.
        dtype: ``"float16"`` (half the disk; cosine error ~1e-3) or ``"float32"``.
        chunk: rows per unit of work, of resumption and of the split over processes.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    folder = Path(folder)
    n = len(source)
    if n == 0:
        raise DataError(f"{source.root} holds no images")
    names = [source.name(i) for i in range(n)]
    meta = {"format": EMBED_FORMAT, "key": key, "n": n, "dtype": dtype, "chunk": chunk}
    meta["dim"] = _feature_dim(extractor, run)
    arrays = _prepare(folder, meta, names)
    rank, world = dist.rank(), dist.world_size()
    mine = [c for c in range(len(arrays["done"])) if c % world == rank and not arrays["done"][c]]
    for c in tqdm(mine, desc=f"embed {folder.name}", unit="chunk", disable=not progress or not mine):
        rows = range(c * chunk, min(n, (c + 1) * chunk))
        _hash_chunk(source, rows, arrays)
        _embed_chunk(extractor, source, rows, run, arrays)
        for name in ("vectors", "ok", "digests", "sizes"):
            arrays[name].flush()
        arrays["done"][c] = 1
        arrays["done"].flush()
    if dist.is_initialized():
        torch.distributed.barrier()
    arrays = _open(folder, n, meta["dim"], dtype, chunk, "r")
    return Embeddings(folder, arrays["vectors"], arrays["ok"], arrays["digests"], arrays["sizes"], names, meta)
