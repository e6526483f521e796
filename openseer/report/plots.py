"""Figures of a run: training curves from ``metrics.jsonl`` and image grids (neighbours, prototypes).

matplotlib is an optional dependency (``pip install matplotlib``); it is imported only here, with the
non-interactive Agg backend, so a head-less server can draw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("openseer report needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` (unreadable lines, e.g. a torn last line, are skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def plot_curves(rows: list[dict], out: Path, uniform_loss: float | None = None) -> Path | None:
    """Loss, lr, monitor kNN top-1 and throughput against the step, in one 2x2 figure."""
    if not rows:
        return None
    plt = pyplot()
    steps = [r["step"] for r in rows]

    def series(key):
        return [r.get(key) if r.get(key) is not None else np.nan for r in rows]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    ax = axes[0, 0]
    ax.plot(steps, series("loss"), color="tab:blue")
    if uniform_loss:
        ax.axhline(uniform_loss, ls="--", color="grey", lw=1, label=f"uniform codes (ln K = {uniform_loss:.2f})")
        ax.legend(loc="upper right", fontsize=8)
    ax.set(title="training loss", xlabel="step", ylabel="loss")
    ax = axes[0, 1]
    ax.plot(steps, series("lr"), color="tab:orange")
    ax.set(title="learning rate", xlabel="step", ylabel="lr")
    ax = axes[1, 0]
    monitored = [(r["step"], 100 * r["monitor_knn_top1"]) for r in rows if r.get("monitor_knn_top1") is not None]
    if monitored:
        ax.plot(*zip(*monitored, strict=True), marker="o", color="tab:green")
        ax.set(title="online kNN top-1 (monitor)", xlabel="step", ylabel="top-1 (%)")
    else:
        ax.text(
            0.5,
            0.5,
            "no monitor in this run\n(pretrain --monitor-train/--monitor-test)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="grey",
        )
        ax.set(title="online kNN top-1 (monitor)", xticks=[], yticks=[])
    ax = axes[1, 1]
    ax.plot(steps, series("images_per_s"), color="tab:purple")
    ax.set(title="throughput", xlabel="step", ylabel="images / s")
    for a in axes.flat:
        a.grid(alpha=0.3)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


BACKBONE, OUTPUT = "tab:red", "tab:blue"
HEALTH_PANELS = (  # title, ((row key, line label, colour), ...): the method output's line beside the backbone's
    ("RankMe (probe set)", (("health_rankme", "backbone", BACKBONE), ("health_head_rankme", "method output", OUTPUT))),
    ("alpha-ReQ", (("health_alpha_req", "backbone", BACKBONE), ("health_head_alpha_req", "method output", OUTPUT))),
    (
        "std of normalised embeddings",
        (("health_feature_std", "backbone", BACKBONE), ("health_head_std", "method output", OUTPUT)),
    ),
    (
        "prototype codes (probe set)",
        (("health_code_entropy", "entropy / ln K", "tab:purple"), ("health_code_occupancy", "occupancy", "tab:green")),
    ),
)


def plot_health(rows: list[dict], out: Path, best_step: int | None = None) -> Path | None:
    """The label-free health signals (`openseer.train.health`) against the step, the best step marked: backbone
    and method-output lines share a panel; a panel appears when a row carries one of its keys."""
    present = {k for r in rows for k, v in r.items() if v is not None}
    panels = [(t, [line for line in lines if line[0] in present]) for t, lines in HEALTH_PANELS]
    panels = [(t, lines) for t, lines in panels if lines]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), constrained_layout=True, squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels, strict=True):
        for key, label, colour in lines:
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, color=colour, label=label)
        if best_step is not None:
            ax.axvline(best_step, ls="--", color="grey", lw=1, label=f"best label-free step {best_step}")
        ax.legend(loc="best", fontsize=8)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def health_section(rows: list[dict], summary: dict, out_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """The report's health figure (title naming the best label-free step) and one note per collapse warning."""
    best = summary.get("best_label_free") or {}
    notes = [
        f"collapse warning at step {w['step']}: {w['signal']}={w['value']:.4g} stayed {w['direction']} "
        f"{w['line']:.4g}; {w['remedy']}"
        for w in summary.get("collapse_warnings", [])
    ]
    if not plot_health(rows, out_dir / "health.png", best.get("step")):
        return [], notes
    title = "Is it learning? Label-free health signals"
    if best:
        title += f" (best label-free step {best['step']}: RankMe {best['score']:.2f})"
    return [(title, "health.png")], notes


def image_grid(
    rows: list[list[np.ndarray]],
    out: Path,
    row_titles: list[str],
    cell_titles: list[list[str]] | None = None,
    first_is_query: bool = False,
    title: str = "",
) -> Path:
    """Save a grid of HxWx3 uint8 images; row i is ``rows[i]``, labelled with ``row_titles[i]``."""
    plt = pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.25 * n_cols + 0.8, 1.35 * n_rows + 0.5), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j >= len(row):
                continue
            ax.imshow(row[j], interpolation="nearest")
            if first_is_query and j == 0:
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_color("red")
                    spine.set_linewidth(3)
            if cell_titles is not None and j < len(cell_titles[i]):
                ax.set_title(cell_titles[i][j], fontsize=7, pad=2)
        axes[i, 0].set_ylabel(row_titles[i], fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
