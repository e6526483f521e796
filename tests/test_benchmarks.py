"""The GPU check script is run on a CPU with a tiny preset, so that it still works when a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
