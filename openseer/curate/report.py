"""What ``openseer curate`` writes: ``curated.txt``, ``summary.json`` and ``report.html`` with pictures.

``curated.txt`` is a file list `openseer.data.lists` reads as it is, one image per line as the pool's source
names it (`openseer.data.sources.ImageSource.entry`): an absolute path for a folder or file-list pool,
``ARCHIVE::MEMBER`` for a tar or shard pool, so ``openseer pretrain --data DIR/curated.txt`` trains on the
curated subset whatever the pool was. The pictures use matplotlib through `openseer.report.plots`.
"""

from __future__ import annotations

import html
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openseer.data import BadImage, load_rgb
from openseer.data.sources import ImageSource
from openseer.io import atomic_write_json, atomic_write_text
from openseer.report.plots import image_grid, pyplot

log = logging.getLogger("openseer")
THUMB = 64


@dataclass
class Curation:
    """Everything the outputs are drawn from (built by `openseer.curate.workflow.curate`)."""

    source: ImageSource
    selected: np.ndarray
    summary: dict[str, Any]
    components: np.ndarray
    valid: np.ndarray
    pairs: list[tuple[str, str, str, float]] = field(default_factory=list)
    eval_sources: dict[str, ImageSource] = field(default_factory=dict)
    top_cluster_of_selected: list[int] = field(default_factory=list)


def curated_entries(source: ImageSource, ids: np.ndarray) -> list[str]:
    """The file-list lines of ``ids``: absolute paths, or ``ARCHIVE::MEMBER`` for images of an archive."""
    return [source.entry(int(i)) for i in ids]


def _thumb(source: ImageSource, i: int) -> np.ndarray:
    try:
        return np.asarray(load_rgb(source.read(i)).resize((THUMB, THUMB)))
    except (BadImage, OSError):
        return np.zeros((THUMB, THUMB, 3), dtype=np.uint8)


def _name_index(source: ImageSource) -> dict[str, int]:
    return {source.name(i): i for i in range(len(source))}


def duplicate_groups(components: np.ndarray, valid: np.ndarray, limit: int) -> list[np.ndarray]:
    """The ``limit`` largest duplicate components (>= 2 decodable members), largest first."""
    labels = components[valid]
    uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    big = np.flatnonzero(counts > 1)
    big = big[np.argsort(-counts[big], kind="stable")][:limit]
    return [valid[inverse == g] for g in big]


def _figures(out: Path, cur: Curation, per_row: int) -> list[tuple[str, str]]:
    figs = []
    src = cur.source
    groups = duplicate_groups(cur.components, cur.valid, 8)
    if groups:
        rows = [[_thumb(src, int(i)) for i in g[:per_row]] for g in groups]
        titles = [[src.name(int(i))[-14:] for i in g[:per_row]] for g in groups]
        path = image_grid(rows, out / "duplicates.png", [f"{len(g)} copies" for g in groups], titles)
        figs.append(("Largest duplicate groups (one image of each is kept)", path.name))
    if cur.pairs:
        pool_at, rows, names = _name_index(src), [], []
        eval_at = {p: _name_index(s) for p, s in cur.eval_sources.items()}
        for pool_name, eval_set, eval_name, cos in cur.pairs[:8]:
            rows.append(
                [_thumb(cur.eval_sources[eval_set], eval_at[eval_set][eval_name]), _thumb(src, pool_at[pool_name])]
            )
            names.append(f"cos {cos:.2f}")
        path = image_grid(rows, out / "leakage.png", names, [["evaluation", "pool"]] * len(rows))
        figs.append(("Leakage pairs (evaluation image, pool image removed)", path.name))
    clusters = cur.summary.get("clusters") or {}
    if clusters:
        figs.append(("Cluster sizes before and after balanced sampling", _cluster_plot(out, clusters).name))
        top = np.asarray(cur.top_cluster_of_selected)
        rows, labels = [], []
        for c in np.argsort(-np.bincount(top))[:10]:
            members = cur.selected[top == c][:per_row]
            if len(members):
                rows.append([_thumb(src, int(i)) for i in members])
                labels.append(f"cluster {c}")
        if rows:
            image_grid(rows, out / "clusters.png", labels)
            figs.append(("Curated images per top-level cluster", "clusters.png"))
    return figs


def _cluster_plot(out: Path, clusters: dict[str, Any]) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, level in zip(axes, ("top_level", "finest"), strict=True):
        before = np.sort(np.asarray(clusters[f"{level}_sizes_before"]))[::-1]
        order = np.argsort(-np.asarray(clusters[f"{level}_sizes_before"]), kind="stable")
        after = np.asarray(clusters[f"{level}_sizes_after"])[order]
        ax.bar(np.arange(len(before)), before, color="#bbb", label="before", width=1.0)
        ax.bar(np.arange(len(after)), after, color="#1f77b4", label="after", width=1.0)
        ax.set_yscale("log")
        ax.set_xlabel(f"{level.replace('_', '-')} clusters, largest first")
        ax.set_ylabel("images")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "cluster_sizes.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _html(summary: dict[str, Any], figures: list[tuple[str, str]]) -> str:
    esc = html.escape
    counts = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in summary["counts"].items())
    pairs = "".join(
        f"<tr><td>{esc(p['pool'])}</td><td>{esc(p['eval_set'])}</td><td>{esc(p['eval'])}</td><td>{p['cosine']}</td></tr>"
        for p in summary["leakage_pairs"][:200]
    )
    opts = esc(json.dumps(summary["options"]))
    figs = "".join(f"<h2>{esc(t)}</h2><img src='{esc(f)}' alt='{esc(t)}'>" for t, f in figures)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>openseer curate</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{max-width:100%;border:1px solid #eee}}</style></head><body>
<h1>openseer curate: {esc(summary["data"])}</h1><p>model {esc(summary["model"])}; options <code>{opts}</code></p>
<h2>Images per stage</h2><table>{counts}</table>
<h2>Removed for leakage ({len(summary["leakage_pairs"])} pairs)</h2>
<table><tr><th>pool image</th><th>evaluation set</th><th>evaluation image</th><th>cosine</th></tr>{pairs}</table>
{figs}</body></html>
"""


def write_outputs(out: str | os.PathLike[str], cur: Curation, report_images: int = 8) -> dict[str, str]:
    """Write the file list, ``summary.json`` and ``report.html`` (pictures when ``report_images`` > 0)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = out / "curated.txt"
    atomic_write_text(written, "".join(f"{line}\n" for line in curated_entries(cur.source, cur.selected)))
    figures = []
    if report_images > 0:
        try:
            figures = _figures(out, cur, report_images)
        except ImportError as e:  # matplotlib is optional
            log.warning("report.html without pictures: %s", e)
    files = {"list": str(written), "summary": str(out / "summary.json"), "report": str(out / "report.html")}
    cur.summary["outputs"] = files
    atomic_write_json(out / "summary.json", cur.summary)
    atomic_write_text(out / "report.html", _html(cur.summary, figures))
    return files
