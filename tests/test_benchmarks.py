"""The GPU check script is run on a CPU with a tiny preset, so that it still works when a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from openseer.config import derive, load_config
from openseer.train.loop import pretrain
from tests.helpers import TINY_OVERRIDES, write_images

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_on_cpu_with_a_tiny_preset(tmp_path):
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "PRESETS": "demo",
        "STEPS": "1",
        "WARMUP": "0",
        "BATCH": "2",
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    (row,) = result["rows"]
    assert row["preset"] == "demo" and row["losses_finite"] and row["images_per_s"] > 0


def _reference_spearman(x: list[float], y: list[float]) -> float:
    """Average ranks by counting (rank = #smaller + (#equal + 1) / 2), then Pearson, in float64."""

    def ranks(v: list[float]) -> list[float]:
        return [sum(w < a for w in v) + (sum(w == a for w in v) + 1) / 2 for a in v]

    a, b = ranks(x), ranks(y)
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((p - ma) * (q - mb) for p, q in zip(a, b, strict=True))
    return cov / (sum((p - ma) ** 2 for p in a) * sum((q - mb) ** 2 for q in b)) ** 0.5


def test_health_correlation_spearman_matches_a_counting_reference():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from health_correlation import spearman
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0]  # ties in both
    y = [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0, 2.0, 8.0]
    assert abs(spearman(x, y) - _reference_spearman(x, y)) < 1e-12
    assert abs(spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) - 1.0) < 1e-12
    assert abs(spearman([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]) + 1.0) < 1e-12


def test_health_correlation_head_signals_only_over_rows_that_logged_them(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from health_correlation import logged_head_signals, rho_table
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 10, "loss": 1.0}\n'
        '{"step": 20, "health_rankme": 5.0, "health_head_rankme": 3.0, "health_head_alpha_req": 1.5, '
        '"health_head_std": 0.1}\n'
    )
    assert logged_head_signals(tmp_path) == {20: {"head_rankme": 3.0, "head_alpha_req": 1.5, "head_std": 0.1}}
    base = {"run": "r", "group": "g", "alpha_req": 1.0, "feature_std": 0.1}
    rows = [base | {"step": s, "rankme": float(s), "knn": float(s), "linear": float(-s)} for s in range(5)]
    for r, head in zip(rows[1:], [1.0, 3.0, 2.0, 4.0], strict=True):  # step 0 (random init) has none
        r.update(head_rankme=head, head_alpha_req=1.0, head_std=0.1)
    table = rho_table(rows)["all checkpoints"]
    assert table["n"] == 5 and table["n_head"] == 4
    assert abs(table["rankme~knn"] - 1.0) < 1e-12 and abs(table["rankme~linear"] + 1.0) < 1e-12
    assert abs(table["head_rankme~knn"] - _reference_spearman([1.0, 3.0, 2.0, 4.0], [1.0, 2.0, 3.0, 4.0])) < 1e-12


def test_minutes_budget_cuts_the_preset_schedule_short_at_the_budget_steps(tmp_path):
    """The comparison arm of ``benchmarks/minutes_budget.py``: the preset's own schedule (its epochs), stopped
    after N steps with a checkpoint there, not a schedule laid over N steps."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from minutes_budget import stop_after
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    data = write_images(tmp_path / "imgs", 24, size=24)
    cfg = load_config("demo", [*TINY_OVERRIDES, f"data.path={data}", "train.epochs=4"])
    full = derive(cfg, 24).total_steps
    summary = pretrain(cfg, tmp_path / "cut", on_step=stop_after(2))
    assert (summary["status"], summary["steps"], summary["total_steps"]) == ("interrupted", 2, full)
    assert full == 12 > 2
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 2
