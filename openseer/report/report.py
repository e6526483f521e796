"""``openseer report RUN_DIR``: one HTML page a person would rather look at than read.

It holds the training curves (`openseer.report.plots.plot_curves`), a grid of query images with their
nearest neighbours in the backbone's feature space (cosine similarity, as the kNN evaluation uses), for SwAV
the images most confidently assigned to a sample of prototypes (the clusters the model found in unlabelled
data, as in the SwAV and DINO papers' figures), and a table of every evaluation JSON found in the run dir.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from openseer.checkpoint import load_backbone, load_checkpoint
from openseer.config import run_info
from openseer.data import load_rgb, open_source
from openseer.errors import BadImage, CheckpointError, DataError
from openseer.eval.registry import load_evaluations
from openseer.eval.settings import FROM_RUN
from openseer.methods import get_method
from openseer.report.plots import health_section, image_grid, plot_curves, read_metrics
from openseer.run_state import load_run_config

log = logging.getLogger("openseer")
_THUMB = 64


def _sample_images(data: str, max_images: int, seed: int, transform):
    """Up to ``max_images`` decodable images of ``data``: (thumbnails, eval tensors, names)."""
    source = open_source(data)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(source))[: max_images if max_images > 0 else None]
    thumbs, tensors, names = [], [], []
    for i in sorted(order.tolist()):
        try:
            img = load_rgb(source.read(i))
        except BadImage:
            continue
        thumbs.append(np.asarray(img.convert("RGB").resize((_THUMB, _THUMB))))
        tensors.append(transform(img))
        names.append(source.name(i))
    if len(tensors) < 2:
        raise DataError(f"report: fewer than 2 decodable images in {data}")
    return thumbs, torch.stack(tensors), names


@torch.no_grad()
def _forward(module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    module.eval()
    return torch.cat([module(images[s : s + batch]).float() for s in range(0, len(images), batch)])


def neighbour_grid(features, thumbs, names, out: Path, queries: int, seed: int, k: int = 8) -> Path:
    """Query images (red frame) followed by their ``k`` nearest neighbours, cosine similarity on top."""
    z = F.normalize(features, dim=1)
    rng = np.random.default_rng(seed + 1)
    picked = rng.choice(len(z), size=min(queries, len(z)), replace=False).tolist()
    rows, titles, cells = [], [], []
    for q in picked:
        sim = z @ z[q]
        sim[q] = -2.0  # never its own neighbour
        top = sim.topk(min(k, len(z) - 1))
        rows.append([thumbs[q], *[thumbs[i] for i in top.indices.tolist()]])
        cells.append(["query", *[f"{s:.2f}" for s in top.values.tolist()]])
        titles.append(Path(names[q]).name[:18])
    return image_grid(rows, out, titles, cells, first_is_query=True, title="nearest neighbours (cosine)")


def prototype_grid(method, images, thumbs, out: Path, prototypes: int, k: int = 8) -> tuple[Path, dict]:
    """Images with the highest score for the most populated prototypes (argmax assignment)."""
    with torch.no_grad():
        method.eval()
        z = torch.cat([method.head(method.backbone(images[s : s + 256])).float() for s in range(0, len(images), 256)])
        scores = z @ F.normalize(method.cluster_weights().float(), dim=1).t()  # (N, K) cosine
    assigned = scores.argmax(dim=1)
    counts = torch.bincount(assigned, minlength=scores.shape[1])
    chosen = counts.argsort(descending=True)[:prototypes].tolist()
    rows, titles, cells = [], [], []
    for p in chosen:
        members = (assigned == p).nonzero().flatten()
        order = members[scores[members, p].argsort(descending=True)][:k]
        rows.append([thumbs[i] for i in order.tolist()])
        cells.append([f"{scores[i, p]:.2f}" for i in order.tolist()])
        titles.append(f"proto {p}\n{int(counts[p])} imgs")
    used = int((counts > 0).sum())
    stats = {"prototypes_used": used, "num_prototypes": int(scores.shape[1]), "num_images": len(images)}
    title = f"images most confidently assigned to the {len(chosen)} largest of {used} used prototypes"
    return image_grid(rows, out, titles, cells, title=title), stats


def _load_method(run_dir: Path, cfg, backbone):
    """The SwAV module of the run's last checkpoint (prototypes and head), or None when it has none."""
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        return None
    state = load_checkpoint(ckpt)
    method = get_method(cfg.method).build(cfg, backbone, run_info(cfg, state.get("world_size", 1)))
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt} does not fit the run's config: {str(e).splitlines()[0]}") from None
    return method


def eval_rows(run_dir: Path) -> list[tuple[str, str, str, str]]:
    """(file, evaluation, setting, result) rows of every evaluation JSON under ``run_dir``: each registered
    evaluation (`openseer.eval.registry`) says its rows; a JSON of no known evaluation is passed over."""
    evaluations = load_evaluations()
    rows = []
    for path in sorted(run_dir.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        kind = data.get("eval", "knn" if "k" in data and "top1" in data else None)  # old kNN JSONs had no "eval"
        entry = evaluations.get(kind) if isinstance(kind, str) else None
        if entry is not None:
            name = str(path.relative_to(run_dir))
            rows += [(name, *row) for row in entry.report_rows(data)]
    return rows


def _html(run_dir: Path, summary: dict, figures: list[tuple[str, str]], evals, notes: list[str]) -> str:
    esc = html.escape
    info = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(str(summary[k]))}</td></tr>"
        for k in (
            "status",
            "steps",
            "epochs",
            "global_batch",
            "final_loss_mean",
            "uniform_loss",
            "seconds",
            "backbone",
            "skipped_images",
            "nonfinite_steps",
        )
        if k in summary
    )
    table = "".join(f"<tr>{''.join(f'<td>{esc(c)}</td>' for c in row)}</tr>" for row in evals)
    eval_html = (
        f"<table><tr><th>file</th><th>evaluation</th><th>setting</th><th>top-1 (%)</th></tr>{table}</table>"
        if evals
        else "<p>No evaluation JSON in this run dir (write them with <code>--out RUN_DIR/eval/NAME.json</code>).</p>"
    )
    figs = "".join(f"<h2>{esc(t)}</h2><img src='{esc(f)}' alt='{esc(t)}'>" for t, f in figures)
    note = "".join(f"<li>{esc(n)}</li>" for n in notes)
    head = f'<meta charset="utf-8"><title>openseer report: {esc(run_dir.name)}</title>'
    return f"""<!doctype html><html><head>{head}
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{max-width:100%;border:1px solid #eee}}</style></head><body>
<h1>openseer run {esc(str(run_dir))}</h1><table>{info}</table>
<h2>Evaluations</h2>{eval_html}{figs}<ul>{note}</ul></body></html>
"""


def write_report(
    run_dir: str | Path,
    data: str | None = None,
    max_images: int = 2000,
    queries: int = 8,
    prototypes: int = 8,
    seed: int = 0,
) -> Path:
    """Write ``RUN_DIR/report/report.html`` and its PNGs; returns the HTML path.

    Args:
        run_dir: an openseer run directory (``config.yaml``, ``metrics.jsonl``, checkpoints).
        data: images for the neighbour and prototype grids (default: the run's ``data.path``).
        max_images: images sampled (seeded) and embedded for the grids.
        queries, prototypes: rows of the two grids.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    summary: dict[str, Any] = {}
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    figures, notes = [], []
    rows = read_metrics(run_dir / "metrics.jsonl")
    if plot_curves(rows, out / "curves.png", summary.get("uniform_loss")):
        figures.append(("Training curves", "curves.png"))
    else:
        notes.append("metrics.jsonl is missing or empty: no curves")
    health_figures, health_notes = health_section(rows, summary, out)
    figures, notes = figures + health_figures, notes + health_notes
    backbone, _ = load_backbone(run_dir)
    run = FROM_RUN.resolve(cfg)
    data = data or cfg.data.path
    thumbs, images, names = _sample_images(data, max_images, seed, run.transform())
    features = _forward(backbone, images, run.batch_size)
    neighbour_grid(features, thumbs, names, out / "neighbours.png", queries, seed)
    figures.append((f"Nearest neighbours among {len(images)} images of {data}", "neighbours.png"))
    method = _load_method(run_dir, cfg, backbone)
    if method is not None and method.cluster_weights() is not None:
        _, stats = prototype_grid(method, images, thumbs, out / "prototypes.png", prototypes)
        figures.append((f"{cfg.method} prototypes: most confident images", "prototypes.png"))
        notes.append(
            f"{stats['prototypes_used']} of {stats['num_prototypes']} prototypes are the argmax of at "
            f"least one of the {stats['num_images']} sampled images"
        )
    else:
        notes.append("no checkpoints/last.pt (or a method without prototypes): no prototype grid")
    page = _html(run_dir, summary, figures, eval_rows(run_dir), notes)
    (out / "report.html").write_text(page)
    return out / "report.html"
