"""Hierarchical k-means with resampling and top-down balanced sampling.

Written from the description in Vo et al. 2024, "Automatic Data Curation for Self-Supervised Learning: A
Clustering-Based Approach" (sections 4.1-4.3), not from its code:

* **k-means with resampling** (their Algorithm 1 in words): after plain k-means, repeat for a few steps: take
  from each cluster the ``r`` points closest to its centroid, run k-means on that union (initialised from the
  current centroids), then assign every point to the new centroids. Dense concepts no longer pull many
  centroids: the centroids spread over the support of the data more uniformly.
* **hierarchy**: level 1 clusters the embeddings into ``k_1`` clusters; level t clusters the ``k_{t-1}``
  centroids of level t-1 into ``k_t`` clusters (``k_1 > k_2 > ...``), each level with resampling. A point's
  level-t cluster is the cluster of its level-(t-1) cluster's centroid.
* **balanced sampling**, top down: the target N is split over the top-level clusters so that each gets
  ``min(size, cap)`` with the per-cluster cap found by binary search (the totals meet N exactly; the few
  images left over after the integer cap go one each to clusters above the cap); each cluster's share is split
  the same way over its children, down to level 1, where the images are drawn at random (the paper's
  "random" strategy) or closest to the centroid first.

k-means is faiss's when faiss is installed, else the small torch implementation below (Lloyd's algorithm,
k-means++ seeding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from openseer.curate.graph import faiss

#: Above n x k of this, k-means++ seeding (k passes over the data) is left to faiss's random seeding.
KMEANSPP_MAX_WORK = 50_000_000


def default_levels(n: int) -> tuple[int, ...]:
    """Clusters per level scaled to the pool size: ``k_1 = n / 50`` (at most 50,000), then /10 per level while a
    level keeps at least 10 clusters, at most 4 levels. 60 images -> (2,); 50k -> (1000, 100, 10)."""
    ks = [max(2, min(n // 50, 50_000))]
    while len(ks) < 4 and ks[-1] // 10 >= 10:
        ks.append(ks[-1] // 10)
    return tuple(min(k, n) for k in ks)


def _kmeanspp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; 2 + ln k candidates per centre, the one that
    lowers the potential most is kept, as scikit-learn does)."""
    trials = 2 + int(math.log(max(k, 1)))
    centers = [x[torch.randint(len(x), (1,), generator=gen)]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2.clamp_min(0) + 1e-12
        picks = torch.multinomial(probs / probs.sum(), trials, replacement=True, generator=gen)
        cand = torch.minimum(d2[None], torch.cdist(x[picks], x) ** 2)
        best = int(cand.sum(1).argmin())
        centers.append(x[picks[best]][None])
        d2 = cand[best]
    return torch.cat(centers)


def _assign(x: torch.Tensor, centroids: torch.Tensor, batch: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid (squared Euclidean distance) of every row of ``x``."""
    c2 = (centroids**2).sum(1)
    out = [((c2 - 2 * x[s : s + batch] @ centroids.T).argmin(1)) for s in range(0, len(x), batch)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def kmeans(
    x: np.ndarray, k: int, iters: int = 20, seed: int = 0, init: np.ndarray | None = None, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means of the rows of ``x``; returns (centroids (k, D) float32, assignment (n,) int64).

    ``init`` gives starting centroids (else greedy k-means++ when n k <= `KMEANSPP_MAX_WORK`, above it faiss's
    random seeding; torch always seeds with k-means++); an empty cluster
    is re-seeded with the point farthest from its centroid. ``backend``: auto (faiss if installed), faiss, torch.
    """
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    k = min(k, len(x))
    gen = torch.Generator().manual_seed(seed)
    if init is None and len(x) * k <= KMEANSPP_MAX_WORK:  # faiss seeds with random points: k-means++ is safer
        init = _kmeanspp(torch.from_numpy(x), k, gen).numpy()
    if (backend == "faiss" or backend == "auto") and faiss is not None and len(x) > k:
        km = faiss.Kmeans(
            x.shape[1], k, niter=iters, seed=seed, min_points_per_centroid=1, max_points_per_centroid=1 << 20
        )
        km.train(x, init_centroids=None if init is None else np.ascontiguousarray(init, dtype=np.float32))
        _, assign = km.index.search(x, 1)
        return km.centroids.copy(), assign[:, 0].astype(np.int64)
    xt = torch.from_numpy(x)
    centroids = torch.from_numpy(np.array(init, dtype=np.float32)) if init is not None else _kmeanspp(xt, k, gen)
    for _ in range(iters):
        assign = _assign(xt, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, xt)
        counts = torch.bincount(assign, minlength=k)
        new = sums / counts.clamp_min(1)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # re-seed with the points worst served by their centroid
            far = ((xt - centroids[assign]) ** 2).sum(1).topk(len(empty)).indices
            new[empty] = xt[far]
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids.numpy(), _assign(xt, centroids).numpy()


def resampled_kmeans(
    x: np.ndarray, k: int, steps: int, sample_size: int, iters: int = 20, seed: int = 0, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """k-means followed by ``steps`` resampling-clustering steps (module docstring): (centroids, assignment)."""
    centroids, assign = kmeans(x, k, iters, seed, backend=backend)
    for step in range(steps):
        chosen = []
        dist = ((x - centroids[assign]) ** 2).sum(1)
        for c in range(len(centroids)):
            members = np.flatnonzero(assign == c)
            chosen.append(members[np.argsort(dist[members], kind="stable")[:sample_size]])
        subset = x[np.sort(np.concatenate(chosen))]
        if len(subset) <= len(centroids):
            break
        centroids, _ = kmeans(subset, len(centroids), iters, seed + step + 1, init=centroids, backend=backend)
        assign = _assign(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(centroids)
        ).numpy()
    return centroids, assign


@dataclass
class Hierarchy:
    """Clusters of every level, finest (t = 0) first.

    Attributes:
        assign: ``assign[0]`` is the level-0 cluster of every point; ``assign[t]`` (t > 0) the level-t cluster
            of every level-(t-1) centroid (`point_clusters` composes them).
        centroids: ``centroids[t]`` is (k_t, D).
    """

    assign: list[np.ndarray]
    centroids: list[np.ndarray]

    @property
    def levels(self) -> int:
        return len(self.assign)

    def point_clusters(self, level: int) -> np.ndarray:
        """(n,) the level-``level`` cluster (0 = finest) of every point."""
        labels = self.assign[0]
        for t in range(1, level + 1):
            labels = self.assign[t][labels]
        return labels


def hierarchical_kmeans(
    x: np.ndarray,
    levels: tuple[int, ...],
    resample_steps: int = 10,
    sample_sizes: tuple[int, ...] | None = None,
    iters: int = 20,
    seed: int = 0,
    progress: bool = False,
    backend: str = "auto",
) -> Hierarchy:
    """Hierarchical k-means with resampling (module docstring).

    Args:
        x: (n, D) embeddings.
        levels: clusters per level, finest first, e.g. (1000, 100, 10).
        resample_steps: resampling-clustering steps per level (0: plain k-means).
        sample_sizes: points taken per cluster in a resampling step, per level (default: half the mean
            cluster size of that level, at least 1).
    """
    assign, centroids = [], []
    points = np.asarray(x, dtype=np.float32)
    for t, k in enumerate(tqdm(levels, desc="hierarchical k-means", unit="level", disable=not progress)):
        k = min(k, len(points))
        r = sample_sizes[t] if sample_sizes else max(1, len(points) // (2 * k))
        c, a = resampled_kmeans(points, k, resample_steps, r, iters, seed + 1000 * t, backend)
        assign.append(a)
        centroids.append(c)
        points = c
    return Hierarchy(assign, centroids)


def balanced_allocation(sizes: np.ndarray, target: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Split ``target`` over groups of ``sizes``: each gets ``min(size, cap)``, the largest integer cap that does
    not overshoot found by binary search, and the remainder goes one each to (randomly chosen) groups above the
    cap. The result sums to ``target`` exactly and never exceeds a group's size."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if target > sizes.sum() or target < 0:
        raise ValueError(f"cannot take {target} items from groups holding {int(sizes.sum())}")
    lo, hi = 0, int(sizes.max(initial=0))
    while lo < hi:  # largest cap with sum(min(sizes, cap)) <= target
        mid = (lo + hi + 1) // 2
        if np.minimum(sizes, mid).sum() <= target:
            lo = mid
        else:
            hi = mid - 1
    alloc = np.minimum(sizes, lo)
    left = int(target - alloc.sum())
    if left:
        above = np.flatnonzero(sizes > lo)
        pick = (rng or np.random.default_rng(0)).choice(above, size=left, replace=False)
        alloc[pick] += 1
    return alloc


def balanced_sample(
    hierarchy: Hierarchy, x: np.ndarray, target: int, seed: int = 0, strategy: str = "random"
) -> np.ndarray:
    """``target`` point indices drawn top-down balanced over the hierarchy (module docstring), sorted.

    ``strategy``: ``"random"`` points within a finest cluster, or ``"closest"`` to its centroid first.
    """
    if strategy not in ("random", "closest"):
        raise ValueError(f"strategy must be random or closest, got {strategy!r}")
    rng = np.random.default_rng(seed)
    top = hierarchy.levels - 1
    labels = [hierarchy.point_clusters(t) for t in range(hierarchy.levels)]
    chosen: list[np.ndarray] = []

    def take(level: int, cluster: int, members: np.ndarray, n: int) -> None:
        if n == 0:
            return
        if level < 0:  # members of one finest cluster: draw n of them
            if strategy == "random":
                chosen.append(rng.choice(members, size=n, replace=False))
            else:
                centre = hierarchy.centroids[0][cluster]
                d = ((np.asarray(x[members], dtype=np.float32) - centre) ** 2).sum(1)
                chosen.append(members[np.argsort(d, kind="stable")[:n]])
            return
        children, inverse = np.unique(labels[level][members], return_inverse=True)
        sizes = np.bincount(inverse, minlength=len(children))
        groups = np.split(members[np.argsort(inverse, kind="stable")], np.cumsum(sizes)[:-1])
        for j, share in enumerate(balanced_allocation(sizes, n, rng)):
            take(level - 1, int(children[j]), groups[j], int(share))

    everything = np.arange(len(labels[0]))
    take(top, -1, everything, target)
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
