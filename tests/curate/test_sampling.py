"""k-means, hierarchical k-means with resampling and balanced sampling (openseer.curate.sampling)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from openseer.curate import graph
from openseer.curate.sampling import (
    Hierarchy,
    balanced_allocation,
    balanced_sample,
    default_levels,
    hierarchical_kmeans,
    kmeans,
)


def most_balanced(sizes, target):
    """Brute force: of all allocations 0 <= a_i <= s_i summing to target, the one whose sorted-descending
    vector is lexicographically smallest (water-filling), as a sorted list."""
    best = None
    for alloc in itertools.product(*[range(s + 1) for s in sizes]):
        if sum(alloc) == target:
            key = sorted(alloc, reverse=True)
            best = key if best is None or key < best else best
    return sorted(best)


@pytest.mark.parametrize("seed", range(12))
def test_balanced_allocation_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 7, rng.integers(1, 5))
    target = int(rng.integers(0, sizes.sum() + 1))
    alloc = balanced_allocation(sizes, target, rng)
    assert alloc.sum() == target and (alloc <= sizes).all() and (alloc >= 0).all()
    assert sorted(alloc.tolist()) == most_balanced(sizes.tolist(), target)


def test_balanced_allocation_caps_large_groups():
    alloc = balanced_allocation(np.array([1000, 5, 30, 2]), 40)
    assert alloc.tolist()[1:] == [5, 16, 2] or alloc.tolist()[1:] == [5, 17, 2]
    with pytest.raises(ValueError, match="cannot take 9"):
        balanced_allocation(np.array([4, 4]), 9)


def blobs(sizes, d=8, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[: len(sizes)] * 3
    x = np.concatenate([c + spread * rng.normal(size=(n, d)) for c, n in zip(centres, sizes, strict=True)])
    return x.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def purity_ok(assign, truth):
    """Every cluster holds one true blob and every blob one cluster."""
    pairs = set(zip(assign.tolist(), truth.tolist(), strict=True))
    return len(pairs) == len(set(assign.tolist())) == len(set(truth.tolist()))


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_kmeans_separates_blobs(backend):
    if backend == "faiss" and not graph.have_faiss():
        pytest.skip("faiss not installed")
    x, truth = blobs([300, 60, 20, 10])
    _, assign = kmeans(x, 4, seed=0, backend=backend)
    assert purity_ok(assign, truth)


def test_hierarchical_kmeans_levels_and_balanced_sample():
    x, truth = blobs([400, 80, 30, 15], seed=1)
    hier = hierarchical_kmeans(x, (20, 4), resample_steps=3, seed=0)
    assert hier.levels == 2 and len(hier.centroids[0]) == 20 and len(hier.centroids[1]) == 4
    top = hier.point_clusters(1)
    assert purity_ok(top, truth)  # the finest clusters of one blob share one top cluster
    picked = balanced_sample(hier, x, 60, seed=0)
    assert len(picked) == 60 and len(set(picked.tolist())) == 60
    assert sorted(np.bincount(truth[picked]).tolist()) == [15, 15, 15, 15]
    closest = balanced_sample(hier, x, 60, seed=0, strategy="closest")
    assert len(closest) == 60


def test_balanced_sample_is_balanced_at_every_level():
    # a hand-made hierarchy: 6 points in finest clusters [0,0,0,0,1,2], finest 0,1 -> top 0, finest 2 -> top 1
    hier = Hierarchy(assign=[np.array([0, 0, 0, 0, 1, 2]), np.array([0, 0, 1])], centroids=[np.zeros((3, 2))] * 2)
    x = np.zeros((6, 2), dtype=np.float32)
    for target in range(7):
        picked = balanced_sample(hier, x, target, seed=target)
        top = hier.point_clusters(1)[picked]
        fine = hier.assign[0][picked]
        assert len(picked) == target
        assert sorted(np.bincount(top, minlength=2).tolist()) == most_balanced([5, 1], target)
        in_top0 = np.bincount(fine[top == 0], minlength=2)[:2]
        assert sorted(in_top0.tolist()) == most_balanced([4, 1], int((top == 0).sum()))


def test_resampling_spreads_centroids_over_a_dense_mode():
    # 95% of the points in one tight blob: plain k-means spends most centroids there; resampling fewer
    x, truth = blobs([1900, 25, 25, 25, 25], spread=0.3, seed=2)
    dense = []
    for steps in (0, 10):
        hier = hierarchical_kmeans(x, (10,), resample_steps=steps, seed=0, backend="torch")
        dense.append(int((np.bincount(hier.assign[0], minlength=10) > 0)[np.unique(hier.assign[0][truth == 0])].sum()))
    assert dense[1] <= dense[0]


def test_default_levels_scale_with_the_pool():
    assert default_levels(60) == (2,)
    assert default_levels(50_000) == (1000, 100, 10)
    assert default_levels(10**8)[0] == 50_000 and len(default_levels(10**8)) == 4
