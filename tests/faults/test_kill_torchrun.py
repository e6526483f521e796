"""Two processes under torchrun, one of them killed with SIGKILL mid-run: ``--max-restarts 1`` restarts the
group, which resumes from the last checkpoint and ends with the losses and weights of an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.faults.common import REPO, RUN_OVERRIDES, assert_bitwise_equal, fault_env, final_weights, metrics_rows
from tests.helpers import write_images

pytestmark = pytest.mark.dist


def _torchrun(data, out, *torchrun_args: str, fault: str | None = None):
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *torchrun_args]
    argv += ["-m", "openseer.cli", "pretrain", "demo", *RUN_OVERRIDES, "train.epochs=3"]
    argv += ["--data", str(data), "--out", str(out)]
    env = fault_env(fault, rank=1 if fault else None)
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_one_process_killed_group_restarts_and_resumes(tmp_path):
    data = write_images(tmp_path / "imgs", 32)  # 2 processes x 8 = 16 per step: 2 steps per epoch, 6 steps
    reference = _torchrun(data, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    # rank 1 dies right after the optimizer step of step 3 (the last checkpoint is step 2's), first attempt only
    run = tmp_path / "run"
    restarted = _torchrun(data, run, "--max-restarts", "1", fault="step:3")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert f"(exitcode: -{int(signal.SIGKILL)}) local_rank: 1" in restarted.stderr  # the agent saw rank 1 killed
    assert "resumed from" in restarted.stderr and "at step 2" in restarted.stderr
    assert [r[0] for r in metrics_rows(run)] == list(range(1, 7))
    assert metrics_rows(run) == metrics_rows(tmp_path / "reference")
    assert_bitwise_equal(final_weights(run), final_weights(tmp_path / "reference"))
