"""``openseer eval all``: every evaluation of one backbone, next to its random-init floor, in one table.

"Did pretraining help, and by how much?" needs the same protocol run on the pretrained backbone and on a
randomly initialised backbone of the same architecture (timm's initialisation, seed 0): the floor a
representation must beat. This runs, for both, kNN (several k), the linear-probe grid, low-shot 1% / 10%
(linear + kNN over seeds) and optionally fine-tuning on a label fraction, with the same functions as the
single commands. Features are cached as usual, so re-running costs seconds. Every result is written as JSON
into the output folder (``pretrained_*.json``, ``random_*.json``, low-shot subsets beside them) together with
``summary.md`` (the table) and ``summary.json`` (the table's numbers and the timings).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openseer.eval.finetune import finetune
from openseer.eval.knn import knn_result
from openseer.eval.linear import linear_probe
from openseer.eval.lowshot import run_lowshot
from openseer.eval.pipeline import frozen_pair, random_init_backbone
from openseer.eval.settings import FROM_RUN, EvalSettings
from openseer.io import atomic_write_json, atomic_write_text
from openseer.weights.load import load_backbone


def default_out_dir(checkpoint: str | Path) -> Path:
    """``RUN_DIR/eval`` for a run dir, else an ``eval`` folder beside the checkpoint file."""
    path = Path(checkpoint)
    return path / "eval" if path.is_dir() else path.parent / "eval"


def _frozen(train, test, ks, fractions, seeds, out_dir: Path, name: str) -> tuple[dict, dict]:
    timings = {}
    started = time.perf_counter()
    knn = knn_result(train, test, ks=ks)
    timings["knn"] = time.perf_counter() - started
    started = time.perf_counter()
    linear = linear_probe(train.features, train.labels, test.features, test.labels, len(train.classes))
    timings["linear_grid"] = time.perf_counter() - started
    started = time.perf_counter()
    low_ks = sorted({min(k, 20) for k in ks})
    lowshot = run_lowshot(
        train, test, fractions, seeds, ks=low_ks, subsets_out=out_dir / f"{name}_lowshot.subsets.json"
    )
    timings["lowshot"] = time.perf_counter() - started
    results = {
        "knn": knn,
        "linear": linear,
        "lowshot": lowshot,
    }
    return results, timings


def _cells(results: dict, ks: Sequence[int], fractions: Sequence[float]) -> list[str]:
    def pct(v: float) -> str:
        return f"{100 * v:.1f}"

    def ms(v: dict) -> str:
        return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"

    cells = [pct(results["knn"]["top1"][str(k)]) for k in ks] + [pct(results["linear"]["top1"])]
    low = results["lowshot"]["results"]
    low_k = str(max(int(k) for k in next(iter(low.values()))["knn_top1"]))
    for f in fractions:
        cells += [ms(low[str(f)]["linear_top1"]), ms(low[str(f)]["knn_top1"][low_k])]
    if "finetune" in results:
        cells.append(pct(results["finetune"]["top1"]))
    return cells


def run_suite(
    checkpoint: str | Path,
    train: str,
    test: str,
    out_dir: str | Path | None = None,
    ks: Sequence[int] = (10, 20, 200),
    fractions: Sequence[float] = (0.01, 0.1),
    seeds: int = 3,
    baseline: bool = True,
    finetune_fraction: float = 0.0,
    finetune_epochs: int = 10,
    settings: EvalSettings = FROM_RUN,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (and a random-init floor when ``baseline``) on a labelled train/test pair.

    Returns a dict with ``table`` (markdown), ``rows`` (label -> cells), ``timings`` and ``out_dir``.
    """
    out = Path(out_dir) if out_dir else default_out_dir(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    candidates = [("pretrained", Path(checkpoint))]
    if baseline:
        candidates.append(("random", random_init_backbone(checkpoint, out)))
    rows, timings = {}, {}
    for name, ckpt in candidates:
        backbone, config = load_backbone(ckpt)
        started = time.perf_counter()
        train_f, test_f, meta = frozen_pair(ckpt, train, test, settings, backbone=backbone, config=config)
        extraction = time.perf_counter() - started
        results, timing = _frozen(train_f, test_f, ks, fractions, seeds, out, name)
        results["knn"].update(meta)
        timing["features"] = extraction
        if finetune_fraction > 0:
            started = time.perf_counter()
            results["finetune"] = finetune(
                backbone,
                config,
                train,
                test,
                fraction=finetune_fraction,
                epochs=finetune_epochs,
                settings=settings,
            )
            timing["finetune"] = time.perf_counter() - started
        for kind, result in results.items():
            result = {**result, "checkpoint": str(ckpt)}
            atomic_write_json(out / f"{name}_{kind}.json", result)
        rows[name] = _cells(results, ks, fractions)
        timings[name] = {k: round(v, 3) for k, v in timing.items()}
    header = [f"kNN k={k}" for k in ks] + ["linear"]
    for f in fractions:
        header += [f"{f:.0%} linear", f"{f:.0%} kNN"]
    if finetune_fraction > 0:
        header.append(f"fine-tune {finetune_fraction:.0%}")
    labels = {"pretrained": str(checkpoint), "random": "random init (same architecture)"}
    lines = ["| backbone | " + " | ".join(header) + " |", "| --- " * (len(header) + 1) + "|"]
    lines += [f"| {labels[name]} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    table = "\n".join(lines)
    summary = {"checkpoint": str(checkpoint), "train": str(train), "test": str(test), "header": header}
    summary.update(rows=rows, timings=timings, table=table, out_dir=str(out))
    atomic_write_text(out / "summary.md", table + "\n")
    atomic_write_json(out / "summary.json", summary)
    return summary
