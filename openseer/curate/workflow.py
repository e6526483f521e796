"""``openseer curate``: deduplicate a pool, keep evaluation images out of it, sample a balanced subset.

The stages (docs/curation.md):

1. **embed** the pool and every evaluation set once (`openseer.curate.embed`: memory-mapped, resumable, split
   over torchrun processes); undecodable images are skipped and counted, as ``pretrain`` does;
2. **exact duplicates**: images with the same BLAKE2b-128 content digest are joined;
3. **near duplicates**: cosine kNN graph, edges above ``dedup_threshold``, connected components (union-find,
   DINOv2's recipe); one image per component is kept (`openseer.curate.graph.keep_one_per_component`);
4. **leakage**: a pool image above ``leakage_threshold`` to an evaluation image (or byte-identical to one)
   is removed with its whole component; every removed pair is listed;
5. **balanced sampling** to ``target`` images: hierarchical k-means with resampling, then top-down balanced
   sampling (`openseer.curate.sampling`, Vo et al. 2024).

Only rank 0 does stages 2-5 and writes ``DIR/curated.txt``, ``DIR/summary.json`` and ``DIR/report.html``;
the user's pool is only read.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from openseer import dist
from openseer.curate.embed import Embeddings, embed_source, embedding_key
from openseer.curate.graph import UnionFind, choose_index, edges_above, keep_one_per_component, knn
from openseer.curate.leakage import leakage_pairs, leaking_components
from openseer.curate.options import CurateOptions
from openseer.curate.report import Curation, write_outputs
from openseer.curate.sampling import balanced_sample, default_levels, hierarchical_kmeans
from openseer.data import open_source
from openseer.errors import CheckpointError, ConfigError, DataError, OpenseerError
from openseer.eval.features import feature_extractor
from openseer.eval.settings import FROM_RUN, EvalSettings
from openseer.weights.load import load_backbone

log = logging.getLogger("openseer")


def load_model(model: str) -> tuple[Any, dict[str, Any]]:
    """(backbone, run config) of any SOURCE; a source that cannot be loaded is one `CheckpointError` line."""
    try:
        return load_backbone(model)
    except OpenseerError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to build the model is the user's SOURCE
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot load model {model}: {first}") from None


def _open(path: str, what: str):
    try:
        source = open_source(path)
    except DataError as e:
        raise DataError(f"{what} {path}: {e}") from None
    if len(source) == 0:
        raise DataError(f"{what} {path} holds no images")
    return source


def _stem(path: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(path).rstrip("/")).name) or "data"


def exact_groups(digests: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """Groups (>= 2 ids) of byte-identical images among ``ids``."""
    keys = np.ascontiguousarray(digests[ids]).view("S16").reshape(-1)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(ids[order], np.cumsum(counts)[:-1])
    return [g for g in groups if len(g) > 1]


def deduplicate(emb: Embeddings, valid: np.ndarray, opts: CurateOptions) -> dict[str, Any]:
    """Exact then near duplicates among the ``valid`` ids: components, kept mask and counts."""
    uf = UnionFind(len(emb))
    exact = exact_groups(emb.digests, valid)
    for group in exact:
        uf.union_edges((group[0], other) for other in group[1:])
    after_exact = len(valid) - sum(len(g) - 1 for g in exact)
    vectors = emb.vectors[valid]
    sims, idx = knn(
        vectors, vectors, opts.neighbours + 1, opts.index, opts.nprobe, seed=opts.seed, progress=opts.progress
    )
    a, b, s = edges_above(sims, idx, opts.dedup_threshold)
    uf.union_edges(zip(valid[a], valid[b], strict=True))
    components = uf.labels()
    keep = np.zeros(len(emb), dtype=bool)
    keep[valid] = keep_one_per_component(components[valid], emb.sizes[valid])
    return {
        "components": components,
        "keep": keep,
        "exact_groups": exact,
        "after_exact": after_exact,
        "near_edges": list(zip(valid[a].tolist(), valid[b].tolist(), s.tolist(), strict=True)),
    }


def remove_leakage(pool: Embeddings, valid: np.ndarray, evals: dict[str, Embeddings], components, opts):
    """Pairs (pool name, eval set, eval name, cosine) and the (n,) mask of pool images removed for leakage."""
    pairs, removed = [], np.zeros(len(pool), dtype=bool)
    for path, emb in evals.items():
        ok = np.flatnonzero(emb.ok)
        found = leakage_pairs(
            pool.vectors[valid],
            pool.digests[valid],
            valid,
            emb.vectors[ok],
            emb.digests[ok],
            opts.leakage_threshold,
            index="flat" if choose_index(len(ok)) != "torch" else "torch",
        )
        if found:
            removed |= leaking_components(components, np.array([p for p, _, _ in found]))
        pairs += [(pool.names[p], path, emb.names[ok[j]], round(s, 4)) for p, j, s in found]
    return pairs, removed


def sample(pool: Embeddings, kept: np.ndarray, opts: CurateOptions) -> tuple[np.ndarray, dict[str, Any]]:
    """``opts.target`` ids of ``kept`` by hierarchical k-means + balanced sampling, and the cluster sizes."""
    if opts.target > len(kept):
        raise ConfigError(
            f"--target {opts.target} is larger than the {len(kept)} images left after deduplication and leakage "
            f"removal; use --target <= {len(kept)} (or 0 to keep them all)"
        )
    x = np.asarray(pool.vectors[kept], dtype=np.float32)
    levels = tuple(opts.levels) or default_levels(len(kept))
    hier = hierarchical_kmeans(
        x, levels, opts.resample_steps, tuple(opts.sample_sizes) or None, opts.kmeans_iters, opts.seed, opts.progress
    )
    picked = balanced_sample(hier, x, opts.target, opts.seed, opts.strategy)
    top = hier.point_clusters(hier.levels - 1)
    k_top = len(hier.centroids[-1])
    clusters = {
        "levels": list(levels),
        "top_level_sizes_before": np.bincount(top, minlength=k_top).tolist(),
        "top_level_sizes_after": np.bincount(top[picked], minlength=k_top).tolist(),
        "finest_sizes_before": np.bincount(hier.assign[0], minlength=len(hier.centroids[0])).tolist(),
        "finest_sizes_after": np.bincount(hier.assign[0][picked], minlength=len(hier.centroids[0])).tolist(),
        "top_cluster_of_selected": top[picked].tolist(),
    }
    return kept[picked], clusters


def _summary(
    data: str, model: str, eval_sets: list[str], opts: CurateOptions, image_size: int, n_valid: int, pool_src, pool
) -> dict[str, Any]:
    """The summary's inputs and the pool's counts before any stage."""
    counts = {
        "pool": len(pool_src) + len(pool_src.skipped),
        "listing_skipped": len(pool_src.skipped),
        "undecodable": int(len(pool) - n_valid),
        "decoded": n_valid,
    }
    return {
        "data": data,
        "model": model,
        "eval_sets": eval_sets,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()},
        "image_size": image_size,
        "index": opts.index if opts.index != "auto" else choose_index(n_valid),
        "counts": counts,
    }


def _stage_counts(dedup: dict[str, Any], leaked: np.ndarray, kept: np.ndarray, selected: np.ndarray) -> dict[str, int]:
    """Images left after each stage."""
    return {
        "after_exact_dedup": dedup["after_exact"],
        "after_near_dedup": int(dedup["keep"].sum()),
        "removed_for_leakage": int((dedup["keep"] & leaked).sum()),
        "leaked_in_pool_incl_duplicates": int(leaked.sum()),
        "after_leakage": len(kept),
        "curated": len(selected),
    }


def curate(
    data: str | os.PathLike[str],
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    eval_sets: list[str] | tuple[str, ...] = (),
    settings: EvalSettings = FROM_RUN,
    options: CurateOptions | None = None,
) -> dict[str, Any]:
    """Curate the pool ``data`` with the backbone ``model`` into ``out`` (module docstring); returns the summary.

    Args:
        data: anything ``pretrain --data`` takes (folder, file list, tar, shards).
        model: any backbone SOURCE (run dir, ``backbone.safetensors``, ``timm:NAME``, SEER/DINO files).
        out: output folder (``curated.txt``, ``summary.json``, ``report.html``, ``embeddings/``).
        eval_sets: evaluation sets whose (near) copies are removed from the pool.
        settings: image size, crop, batch size, workers and device of the embedding pass.
        options: thresholds, kNN and k-means choices, ``target`` (`CurateOptions`).

    Raises:
        DataError: an empty pool or evaluation set, a tar pool whose name has no tar suffix (``curated.txt``
            names its members ``ARCHIVE::MEMBER``); ConfigError: a bad option or a target larger than the
            deduplicated pool; CheckpointError: a model that cannot be loaded.
    """
    opts = (options or CurateOptions()).validate()
    started = time.perf_counter()
    out = Path(out)
    pool_src = _open(str(data), "pool")
    pool_src.entry(0)  # a pool whose images no file list can name (a tar without a tar suffix) fails before embedding
    eval_srcs = {str(p): _open(str(p), "evaluation set") for p in eval_sets}
    backbone, config = load_model(str(model))
    run = settings.resolve(config)
    extractor = feature_extractor(backbone, opts.layer)

    def embed(source, name):
        key = embedding_key(str(model), source, run, opts.layer)
        return embed_source(
            source, extractor, run, out / "embeddings" / name, key, opts.dtype, opts.chunk, opts.progress
        )

    pool = embed(pool_src, "pool")
    evals = {p: embed(src, f"eval-{i}-{_stem(p)}") for i, (p, src) in enumerate(eval_srcs.items())}
    if not dist.is_main():
        return {}
    for path, emb in evals.items():
        if not emb.ok.any():
            raise DataError(f"evaluation set {path}: none of its {len(emb)} images could be decoded")
    valid = np.flatnonzero(pool.ok)
    if len(valid) == 0:
        raise DataError(f"pool {data}: none of its {len(pool)} images could be decoded")
    dedup = deduplicate(pool, valid, opts)
    pairs, leaked = remove_leakage(pool, valid, evals, dedup["components"], opts)
    kept = np.flatnonzero(dedup["keep"] & ~leaked)
    selected, clusters = sample(pool, kept, opts) if opts.target else (kept, {})
    summary = _summary(str(data), str(model), list(eval_srcs), opts, run.image_size, len(valid), pool_src, pool)
    summary["counts"].update(_stage_counts(dedup, leaked, kept, selected))
    summary.update(
        exact_duplicate_groups=len(dedup["exact_groups"]),
        near_duplicate_edges=len(dedup["near_edges"]),
        clusters={k: v for k, v in clusters.items() if k != "top_cluster_of_selected"},
        leakage_pairs=[{"pool": p, "eval_set": e, "eval": n, "cosine": s} for p, e, n, s in pairs],
    )
    summary["seconds"] = round(time.perf_counter() - started, 2)
    curation = Curation(
        pool_src,
        selected,
        summary,
        dedup["components"],
        valid,
        pairs,
        eval_srcs,
        clusters.get("top_cluster_of_selected", []),
    )
    write_outputs(out, curation, opts.report_images)
    return summary
