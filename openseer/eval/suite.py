"""``openseer eval all``: every evaluation of one backbone, next to its random-init floor, in one table.

"Did pretraining help, and by how much?" needs the same protocol run on the pretrained backbone and on a
randomly initialised backbone of the same architecture (timm's initialisation, seed 0): the floor a
representation must beat. This runs, for both, kNN (several k), the linear-probe grid, low-shot 1% / 10%
(linear + kNN over seeds) and optionally fine-tuning on a label fraction, with the same functions as the
single commands: every registered evaluation with a `SuiteRole` (`openseer.eval.registry`) adds its columns, in
registry order. Features are cached as usual, so re-running costs seconds. Every result is written as JSON
into the output folder (``pretrained_*.json``, ``random_*.json``, low-shot subsets beside them) together with
``summary.md`` (the table) and ``summary.json`` (the table's numbers and the timings).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from openseer.errors import ConfigError
from openseer.eval.pipeline import frozen_pair, random_init_backbone, run_evaluation
from openseer.eval.registry import Evaluation, load_evaluations, suite_defaults
from openseer.eval.settings import FROM_RUN, EvalSettings
from openseer.io import atomic_write_json, atomic_write_text
from openseer.weights.load import load_backbone


def default_out_dir(checkpoint: str | Path) -> Path:
    """``RUN_DIR/eval`` for a run dir, else an ``eval`` folder beside the checkpoint file."""
    path = Path(checkpoint)
    return path / "eval" if path.is_dir() else path.parent / "eval"


def suite_params(**params: Any) -> dict[str, Any]:
    """The suite's parameters: the defaults of every registered role, updated by ``params`` (checked)."""
    defaults = suite_defaults()
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown `eval all` option(s) {', '.join(unknown)}; valid: {', '.join(defaults)}")
    return {**defaults, **params}


def _members() -> list[Evaluation]:
    """The registered evaluations that take part in the suite, frozen ones first (they share the features
    and run before any evaluation that may train the backbone)."""
    members = [e for e in load_evaluations().values() if e.suite is not None]
    return [e for e in members if e.frozen] + [e for e in members if not e.frozen]


def _evaluate(
    name: str, ckpt: Path, train: str, test: str, params: dict, out: Path, settings: EvalSettings
) -> tuple[dict[str, dict], dict[str, float]]:
    """Every suite evaluation of one backbone: (evaluation name -> result, timings in seconds)."""
    backbone, config = load_backbone(ckpt)
    started = time.perf_counter()
    features = frozen_pair(ckpt, train, test, settings, backbone=backbone, config=config)
    timings = {"features": time.perf_counter() - started}
    results = {}
    for entry in _members():
        options = entry.suite.options(params, out, name)
        if options is None:
            continue
        started = time.perf_counter()
        inputs = {"features": features} if entry.frozen else {"model": (backbone, config)}
        results[entry.name] = run_evaluation(entry, ckpt, train, test, settings, **inputs, **options)
        timings[entry.name] = time.perf_counter() - started
    return results, timings


def _cells(results: dict[str, dict], params: dict) -> tuple[list[str], list[str]]:
    """(header, cells) of one backbone's row: the columns of every evaluation that ran."""
    header, cells = [], []
    for entry in _members():
        if entry.name in results:
            header += entry.suite.header(params)
            cells += entry.suite.cells(results[entry.name], params)
    return header, cells


def run_suite(
    checkpoint: str | Path,
    train: str,
    test: str,
    out_dir: str | Path | None = None,
    baseline: bool = True,
    settings: EvalSettings = FROM_RUN,
    **params: Any,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (and a random-init floor when ``baseline``) on a labelled train/test pair.

    ``params`` are the suite's parameters (`suite_params`; built in: ``ks`` (10, 20, 200), ``fractions``
    (0.01, 0.1), ``seeds`` 3, ``finetune_fraction`` 0 (skip), ``finetune_epochs`` 10).

    Returns a dict with ``table`` (markdown), ``header``, ``rows`` (label -> cells), ``timings`` and ``out_dir``.
    """
    params = suite_params(**params)
    out = Path(out_dir) if out_dir else default_out_dir(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    candidates = [("pretrained", Path(checkpoint))]
    if baseline:
        candidates.append(("random", random_init_backbone(checkpoint, out)))
    rows, timings, header = {}, {}, []
    for name, ckpt in candidates:
        results, timing = _evaluate(name, ckpt, train, test, params, out, settings)
        for kind, result in results.items():
            atomic_write_json(out / f"{name}_{kind}.json", {**result, "checkpoint": str(ckpt)})
        header, rows[name] = _cells(results, params)
        timings[name] = {k: round(v, 3) for k, v in timing.items()}
    labels = {"pretrained": str(checkpoint), "random": "random init (same architecture)"}
    lines = ["| backbone | " + " | ".join(header) + " |", "| --- " * (len(header) + 1) + "|"]
    lines += [f"| {labels[name]} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    table = "\n".join(lines)
    summary = {"checkpoint": str(checkpoint), "train": str(train), "test": str(test), "header": header}
    summary.update(rows=rows, timings=timings, table=table, out_dir=str(out))
    atomic_write_text(out / "summary.md", table + "\n")
    atomic_write_json(out / "summary.json", summary)
    return summary
