"""Evaluation-set leakage: pool images that are (near) copies of images an evaluation will score.

DINOv2 (Oquab et al. 2023, appendix A.2 "Deduplication") removes from its pretraining pool every image whose
copy-detection neighbour in any test or validation set has cosine similarity above 0.45 (stricter than the
0.6 of pool self-deduplication), and with it that image's whole duplicate component, so that no other copy of
the same picture slips through. :func:`leakage_pairs` finds the pairs (embedding neighbours above the
threshold, plus byte-identical files), :func:`leaking_components` turns them into the removal mask.

:func:`shared_images` is the cheap check behind ``openseer eval --check-leakage``: byte-identical files
shared by a pretraining pool and an evaluation set (no model needed).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from openseer.curate.graph import knn
from openseer.data import BadImage, open_source
from openseer.errors import ConfigError
from openseer.run_state import load_run_config

log = logging.getLogger("openseer")


def _digest_keys(digests: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 digests -> (n,) fixed-width bytes, comparable with numpy set operations."""
    return np.ascontiguousarray(digests).view("S16").reshape(-1)


def leakage_pairs(
    pool_vectors: np.ndarray,
    pool_digests: np.ndarray,
    pool_ids: np.ndarray,
    eval_vectors: np.ndarray,
    eval_digests: np.ndarray,
    threshold: float,
    k: int = 4,
    index: str = "auto",
) -> list[tuple[int, int, float]]:
    """(pool id, evaluation row, cosine) of every pool image leaking an evaluation image.

    A pair is an embedding neighbour (each pool image's ``k`` nearest evaluation images) with cosine above
    ``threshold``, or a byte-identical file (cosine reported as 1.0).

    Args:
        pool_vectors, pool_digests: unit embeddings and content digests of the pool images considered.
        pool_ids: their ids in the pool (the rows given are ``pool_ids``' images).
        eval_vectors, eval_digests: the same for the evaluation set's decodable images.
    """
    pairs: dict[tuple[int, int], float] = {}
    if len(eval_vectors) and len(pool_vectors):
        sims, idx = knn(pool_vectors, eval_vectors, k, index=index)
        hit = (sims > threshold) & (idx >= 0)
        for row, col in zip(*np.nonzero(hit), strict=True):
            pairs[(int(pool_ids[row]), int(idx[row, col]))] = float(sims[row, col])
    eval_keys = _digest_keys(eval_digests)
    first_eval = {key: j for j, key in reversed(list(enumerate(eval_keys)))}
    pool_keys = _digest_keys(pool_digests)
    for row in np.flatnonzero(np.isin(pool_keys, eval_keys)):
        pairs[(int(pool_ids[row]), first_eval[pool_keys[row]])] = 1.0
    return sorted((a, b, s) for (a, b), s in pairs.items())


def leaking_components(components: np.ndarray, leaking_ids: np.ndarray) -> np.ndarray:
    """(n,) bool: every pool image in the duplicate component of a leaking image (``components``: component
    id per pool image, e.g. `openseer.curate.graph.UnionFind.labels`)."""
    return np.isin(components, components[np.asarray(leaking_ids, dtype=np.int64)])


def file_digests(path: str | os.PathLike[str]) -> tuple[np.ndarray, list[str]]:
    """BLAKE2b-128 digests (n, 16) and names of the readable images of any ``--data`` path."""
    source = open_source(path)
    digests, names = [], []
    for i in range(len(source)):
        try:
            data = source.read(i)
        except (BadImage, OSError):
            continue
        digests.append(np.frombuffer(hashlib.blake2b(data, digest_size=16).digest(), dtype=np.uint8))
        names.append(source.name(i))
    return (np.stack(digests) if digests else np.empty((0, 16), np.uint8)), names


def pool_path(run_or_list: str | os.PathLike[str]) -> str:
    """The pretraining pool of ``RUN_OR_LIST``: a run directory's ``data.path``, else the path itself."""
    path = Path(run_or_list)
    if path.is_dir() and (path / "config.yaml").is_file():
        data = load_run_config(path).data.path
        if not data:
            raise ConfigError(f"{path} is a run directory without data.path: pass its pool instead")
        return data
    return str(path)


def shared_images(run_or_list: str | os.PathLike[str], eval_paths: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Byte-identical images shared by a pretraining pool and each evaluation set.

    Returns:
        {evaluation path: [(evaluation image name, pool image name), ...]} (only sets with shared images).
    """
    pool_digests, pool_names = file_digests(pool_path(run_or_list))
    pool_keys = _digest_keys(pool_digests)
    pool_of = dict(zip(pool_keys.tolist(), pool_names, strict=True))
    out = {}
    for path in eval_paths:
        digests, names = file_digests(path)
        shared = [
            (name, pool_of[key])
            for key, name in zip(_digest_keys(digests).tolist(), names, strict=True)
            if key in pool_of
        ]
        if shared:
            out[path] = shared
    return out


def warn_shared_images(run_or_list: str, eval_paths: list[str]) -> int:
    """Log one warning per evaluation set sharing images with the pool; returns the number of shared images."""
    total = 0
    for path, shared in shared_images(run_or_list, eval_paths).items():
        total += len(shared)
        examples = ", ".join(f"{a} = {b}" for a, b in shared[:3])
        log.warning(
            "leakage: %d image(s) of %s are also in the pretraining pool of %s (e.g. %s); remove them with "
            "`openseer curate --eval-sets`",
            len(shared),
            path,
            run_or_list,
            examples,
        )
    return total
