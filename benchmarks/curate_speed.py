"""Speed and memory of the index-building stages of ``openseer curate`` on synthetic unit vectors (BENCHMARKS.md):
the kNN graph (faiss flat or IVF, as chosen for the size), union-find components, hierarchical k-means with
resampling and balanced sampling. Clustered synthetic data (``--clusters`` Gaussian blobs) with 2% planted near
copies. Run:

    PYTHONPATH=. python benchmarks/curate_speed.py --n 50000 --dim 440

Each stage prints its wall time (``*_s``) and its CPU time (``*_cpu_s``, all threads of this process): on a
shared machine the CPU time is the figure that holds (run with OMP_NUM_THREADS=1 to read it as one core's).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from openseer.curate.graph import UnionFind, choose_index, edges_above, keep_one_per_component, knn
from openseer.curate.sampling import balanced_sample, default_levels, hierarchical_kmeans


def synthetic(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    sizes = rng.zipf(1.5, clusters).astype(float)  # long-tailed cluster sizes
    which = rng.choice(clusters, n, p=sizes / sizes.sum())
    x = centres[which] + 0.8 * rng.normal(size=(n, dim)).astype(np.float32)
    copies = rng.choice(n, n // 50, replace=False)
    x[copies[: len(copies) // 2]] = x[copies[len(copies) // 2 :]] + 0.01 * rng.normal(size=(len(copies) // 2, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=440)
    p.add_argument("--clusters", type=int, default=500)
    p.add_argument("--neighbours", type=int, default=16)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--levels", default="")
    p.add_argument("--resample-steps", type=int, default=10)
    args = p.parse_args()
    x = synthetic(args.n, args.dim, args.clusters)
    out = {"n": args.n, "dim": args.dim, "index": choose_index(args.n)}
    t, c = time.perf_counter(), time.process_time()
    sims, idx = knn(x, x, args.neighbours + 1, nprobe=args.nprobe)
    out["knn_s"], out["knn_cpu_s"] = round(time.perf_counter() - t, 1), round(time.process_time() - c, 1)
    print(json.dumps(out), flush=True)  # each stage as it ends: a slow machine still gives the first ones
    t, c = time.perf_counter(), time.process_time()
    a, b, _ = edges_above(sims, idx, 0.95)
    uf = UnionFind(args.n)
    uf.union_edges(zip(a, b, strict=True))
    comp = uf.labels()
    keep = keep_one_per_component(comp, np.ones(args.n))
    out["components_s"] = round(time.perf_counter() - t, 1)
    out["components_cpu_s"] = round(time.process_time() - c, 1)
    out["duplicates_removed"] = int(args.n - keep.sum())
    print(json.dumps(out), flush=True)  # each stage as it ends: a slow machine still gives the first ones
    levels = tuple(int(v) for v in args.levels.split(",")) if args.levels else default_levels(int(keep.sum()))
    t, c = time.perf_counter(), time.process_time()
    kept = x[keep]
    hier = hierarchical_kmeans(kept, levels, resample_steps=args.resample_steps)
    out["kmeans_levels"], out["kmeans_s"] = list(levels), round(time.perf_counter() - t, 1)
    out["kmeans_cpu_s"] = round(time.process_time() - c, 1)
    print(json.dumps(out), flush=True)  # each stage as it ends: a slow machine still gives the first ones
    t, c = time.perf_counter(), time.process_time()
    picked = balanced_sample(hier, kept, len(kept) // 2)
    out["sampling_s"], out["sampled"] = round(time.perf_counter() - t, 1), len(picked)
    out["sampling_cpu_s"] = round(time.process_time() - c, 1)
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    out["vectors_gib"] = round(x.nbytes / 2**30, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
