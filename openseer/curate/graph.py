"""Cosine k-nearest-neighbour search and duplicate components (union-find).

DINOv2's LVD-142M pipeline (Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision",
section 3 and appendix A) finds near duplicates as a graph: every image is joined to its k nearest neighbours
whose cosine similarity exceeds a threshold, the graph's connected components are duplicate groups, and one
image per component is kept. This module holds the three pieces, for unit-norm embeddings:

* :func:`knn` - k nearest neighbours by inner product: faiss (an exact ``IndexFlatIP`` for small pools, an
  ``IndexIVFFlat`` for large ones, chosen by :func:`choose_index`) or, without faiss, exact chunked matrix
  products in torch;
* :class:`UnionFind` - disjoint sets with path halving and union by size (Tarjan 1975);
* :func:`keep_one_per_component` - the documented rule for which copy survives.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger("openseer")

#: Pools up to this many vectors are searched exactly (faiss IndexFlatIP); larger ones with IVF.
FLAT_MAX = 200_000

try:  # optional: pip install openseer[curate]
    import faiss
except ImportError:  # the torch fallback below is exact, only slower
    faiss = None


def have_faiss() -> bool:
    """Whether faiss is importable (otherwise kNN and k-means run in torch)."""
    return faiss is not None


class UnionFind:
    """Disjoint sets over ``0..n-1`` (path halving + union by size): near-linear in the number of edges."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return int(a)

    def union(self, a: int, b: int) -> bool:
        """Join the sets of ``a`` and ``b``; False when they were already one set."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return True

    def union_edges(self, edges: Iterable[tuple[int, int]]) -> None:
        for a, b in edges:
            self.union(int(a), int(b))

    def labels(self) -> np.ndarray:
        """(n,) component id of each element: the smallest element of its component."""
        roots = self.parent.copy()
        while True:  # pointer jumping: every element ends on its root
            nxt = roots[roots]
            if np.array_equal(nxt, roots):
                break
            roots = nxt
        smallest = np.full(len(roots), len(roots), dtype=np.int64)
        np.minimum.at(smallest, roots, np.arange(len(roots)))
        return smallest[roots]


def choose_index(n: int, flat_max: int = FLAT_MAX) -> str:
    """``"flat"`` (exact) up to ``flat_max`` vectors, ``"ivf"`` above; ``"torch"`` without faiss."""
    if faiss is None:
        return "torch"
    return "flat" if n <= flat_max else "ivf"


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _ivf(base: np.ndarray, nprobe: int, seed: int):
    """An IVF index over ``base``: 4 sqrt(n) lists trained on at most 64 vectors per list, ``nprobe`` probed."""
    n, d = base.shape
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = base[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
    index.train(train)
    index.nprobe = min(nprobe, nlist)
    return index


def knn(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    index: str = "auto",
    nprobe: int = 32,
    batch: int = 16384,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest ``base`` rows of every query row by inner product (cosine for unit vectors).

    Args:
        queries: (Q, D) vectors; base: (N, D) vectors (float16/32, numpy or memory-mapped).
        k: neighbours per query (clipped to N).
        index: ``"auto"`` (`choose_index`), ``"flat"``, ``"ivf"`` (faiss) or ``"torch"`` (exact, no faiss).
        nprobe: IVF lists visited per query (more: slower, closer to exact).
        batch: queries per search call (bounds memory; also the progress-bar step).

    Returns:
        (similarities (Q, k) float32 descending, indices (Q, k) int64; -1 where IVF found fewer than k).
    """
    n = len(base)
    k = min(k, n)
    kind = choose_index(n) if index == "auto" else index
    if kind in ("flat", "ivf") and faiss is None:
        log.warning("faiss is not installed (pip install faiss-cpu): exact kNN in torch instead")
        kind = "torch"
    base32 = _as_f32(base)
    if kind == "flat":
        searcher = faiss.IndexFlatIP(base32.shape[1])
        searcher.add(base32)
    elif kind == "ivf":
        searcher = _ivf(base32, nprobe, seed)
        searcher.add(base32)
    elif kind != "torch":
        raise ValueError(f"index must be auto, flat, ivf or torch; got {index!r}")
    sims = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    base_t = torch.from_numpy(base32) if kind == "torch" else None
    starts = range(0, len(queries), batch)
    for start in tqdm(starts, desc=f"kNN ({kind})", unit="batch", disable=not progress):
        q = _as_f32(queries[start : start + batch])
        if base_t is not None:
            top = torch.from_numpy(q) @ base_t.T
            s, i = top.topk(k, dim=1)
            sims[start : start + len(q)], idx[start : start + len(q)] = s.numpy(), i.numpy()
        else:
            sims[start : start + len(q)], idx[start : start + len(q)] = searcher.search(q, k)
    return sims, idx


def edges_above(sims: np.ndarray, idx: np.ndarray, threshold: float, query_ids: np.ndarray | None = None):
    """(a, b, similarity) of every kNN pair with similarity > ``threshold`` (self pairs dropped).

    ``query_ids`` maps query rows to ids (default: the row number), e.g. when the queries are a subset.
    """
    rows = np.arange(len(sims)) if query_ids is None else np.asarray(query_ids)
    a = np.broadcast_to(rows[:, None], idx.shape)
    mask = (sims > threshold) & (idx >= 0) & (idx != a)
    return a[mask], idx[mask], sims[mask]


def keep_one_per_component(labels: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The member of each component that is kept: the largest file in bytes (the least compressed, least
    down-scaled copy), ties broken by the first position in the pool. Returns (n,) bool."""
    order = np.lexsort((np.arange(len(labels)), -np.asarray(sizes, dtype=np.int64), labels))
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    keep = np.zeros(len(labels), dtype=bool)
    keep[order[first]] = True
    return keep
