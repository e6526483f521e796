"""Union-find components, kNN search and the keep rule (openseer.curate.graph) against plain references."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from openseer.curate import graph
from openseer.curate.graph import UnionFind, choose_index, edges_above, keep_one_per_component, knn


def bfs_components(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """Reference: component id = smallest member, by breadth-first search over an adjacency list."""
    adj = [[] for _ in range(n)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    out = np.full(n, -1)
    for start in range(n):
        if out[start] >= 0:
            continue
        out[start] = start
        queue = deque([start])
        while queue:
            for nb in adj[queue.popleft()]:
                if out[nb] < 0:
                    out[nb] = start
                    queue.append(nb)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_union_find_matches_bfs(seed):
    rng = np.random.default_rng(seed)
    n = 200
    edges = [tuple(e) for e in rng.integers(0, n, (rng.integers(50, 220), 2))]
    uf = UnionFind(n)
    uf.union_edges(edges)
    np.testing.assert_array_equal(uf.labels(), bfs_components(n, edges))


def test_union_reports_new_joins_only():
    uf = UnionFind(3)
    assert uf.union(0, 1) and not uf.union(1, 0) and uf.union(2, 1)
    assert uf.labels().tolist() == [0, 0, 0]


def brute_knn(q, base, k):
    sims = q.astype(np.float64) @ base.astype(np.float64).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, 1), idx


def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("index", ["flat", "torch", "ivf"])
def test_knn_matches_brute_force(index):
    if index != "torch" and not graph.have_faiss():
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(0)
    base, q = unit(rng, 3000, 16), unit(rng, 50, 16)
    sims, idx = knn(q, base, 5, index=index, nprobe=10_000, batch=17)  # nprobe >= nlist: IVF is exact
    ref_s, ref_i = brute_knn(q, base, 5)
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)
    np.testing.assert_array_equal(idx, ref_i)


def test_knn_float16_memmap_rows(tmp_path):
    rng = np.random.default_rng(1)
    base = np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype="float16", shape=(100, 8))
    base[:] = unit(rng, 100, 8)
    sims, idx = knn(base, base, 1, index="torch")
    assert (idx[:, 0] == np.arange(100)).all() and np.allclose(sims[:, 0], 1, atol=2e-3)


def test_choose_index(monkeypatch):
    if graph.have_faiss():
        assert choose_index(1000) == "flat" and choose_index(10**6) == "ivf"
    monkeypatch.setattr(graph, "faiss", None)
    assert choose_index(1000) == "torch"
    rng = np.random.default_rng(2)
    x = unit(rng, 40, 4)
    _, idx = knn(x, x, 2, index="flat")  # asks for faiss, falls back to exact torch
    assert (idx[:, 0] == np.arange(40)).all()


def test_edges_above_drops_self_missing_and_weak_pairs():
    sims = np.array([[1.0, 0.95, 0.5], [1.0, 0.97, 0.99]], dtype=np.float32)
    idx = np.array([[0, 1, 2], [1, 0, -1]])
    a, b, s = edges_above(sims, idx, 0.9)
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 1), (1, 0)]
    np.testing.assert_allclose(s, [0.95, 0.97])
    a, _, _ = edges_above(sims, idx, 0.9, query_ids=np.array([10, 11]))
    assert a.tolist() == [10, 10, 11, 11]  # self pairs are idx == query id: none here


def test_keep_largest_file_then_first_position():
    labels = np.array([0, 0, 0, 3, 3, 5])
    sizes = np.array([10, 30, 30, 7, 9, 1])
    assert keep_one_per_component(labels, sizes).tolist() == [False, True, False, False, True, True]
