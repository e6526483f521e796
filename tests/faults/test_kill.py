"""Kill -9 at random moments (inside a forward, inside a checkpoint write, right after a rename, between
steps): re-running the same command resumes, and the per-step losses and the final weights equal those of an
uninterrupted run bit for bit (CPU)."""

from __future__ import annotations

import json
import os
import random
import signal

import pytest

from tests.faults.common import (
    RUN_STEPS,
    assert_bitwise_equal,
    final_weights,
    metrics_rows,
    no_traceback,
    pretrain_cli,
)
from tests.helpers import write_images

CHAINS = int(os.environ.get("OPENSEER_FAULT_TRIALS", "1"))  # more seeded chains: OPENSEER_FAULT_TRIALS=N
POINTS = ("forward", "save", "step", "replace")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, with how often it reached each fault point (to draw the moments from)."""
    root = tmp_path_factory.mktemp("kill")
    data = write_images(root / "imgs", 24)
    counts = root / "counts.json"
    done = pretrain_cli(data, root / "reference", fault="count", OPENSEER_FAULT_COUNTS=str(counts))
    assert done.returncode == 0, done.stderr[-2000:]
    reached = json.loads(counts.read_text())
    assert reached["step"] == RUN_STEPS and reached["forward"] > 0 and reached["save"] > 0
    rows = metrics_rows(root / "reference")
    assert [r[0] for r in rows] == list(range(1, RUN_STEPS + 1))
    return data, root, reached, rows, final_weights(root / "reference")


@pytest.mark.parametrize("seed", range(CHAINS))
def test_kill_9_then_rerun_equals_an_uninterrupted_run(reference, seed):
    """One run dir killed at each fault point in turn (seeded order and moment; each rerun resumes what the
    previous one left and is killed again), then run to the end."""
    data, root, reached, rows, weights = reference
    rng = random.Random(seed)
    run = root / f"chain{seed}"
    kills = []
    for point in rng.sample(POINTS, len(POINTS)):
        # a resumed process has less left to do: draw the moment from the first ~half of a whole run's count
        n = rng.randint(1, max(1, reached[point] // 2))
        attempt = pretrain_cli(data, run, fault=f"{point}:{n}")
        if attempt.returncode == 0:  # the run finished before reaching that moment
            break
        assert attempt.returncode == -signal.SIGKILL, (point, n, attempt.stderr[-2000:])
        kills.append((point, n))
    assert len(kills) >= 2, kills
    resumed = pretrain_cli(data, run)
    assert resumed.returncode == 0, (kills, resumed.stderr[-2000:])
    assert no_traceback(resumed.stderr)
    assert metrics_rows(run) == rows, kills
    assert_bitwise_equal(final_weights(run), weights)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == RUN_STEPS
    assert summary["skipped_images"] == 0  # no image is lost to the interruptions
