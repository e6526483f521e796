"""A SIGTERM that reaches only one process (or both, at different steps) stops every process at the same step
boundary with the same checkpoint; resuming gives the losses of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from openseer.checkpoint import load_checkpoint
from openseer.config import load_config
from openseer.train import pretrain
from tests.dist.common import spawn
from tests.dist.test_data_parallel import TINY_REGNET
from tests.helpers import TINY_OVERRIDES, write_images


def _cfg(data: Path):
    return load_config(
        "demo",
        [
            *TINY_OVERRIDES,
            *TINY_REGNET,
            f"data.path={data}",
            "train.batch_size=4",
            "train.epochs=1",
            "train.precision=fp32",
            "swav.queue_length=8",
            "swav.queue_start_epoch=0",
            "swav.freeze_prototypes_steps=1",
        ],
    )


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def signalled_runs(rank: int, world: int, root: str, signal_at: dict[int, int]) -> dict:
    """An uninterrupted run, then one where rank r sends itself SIGTERM after step signal_at[r], then its resume."""
    root = Path(root)
    cfg = _cfg(root / "imgs")
    assert pretrain(cfg, root / "full")["status"] == "completed"

    def terminate(step, loss):
        if signal_at.get(rank) == step:
            os.kill(os.getpid(), signal.SIGTERM)

    part = pretrain(cfg, root / "part", on_step=terminate)
    resumed = pretrain(cfg, root / "part")
    return {"part": part["steps"], "part_status": part["status"], "resumed": resumed["status"]}


@pytest.mark.parametrize("signal_at", [{1: 2}, {0: 2, 1: 3}], ids=["one-process", "both-different-steps"])
def test_sigterm_on_some_processes_stops_all_at_one_step(tmp_path, signal_at):
    write_images(tmp_path / "imgs", 40)  # 2 processes x 4 = 8 per step: 5 steps
    results = spawn(signalled_runs, 2, tmp_path, str(tmp_path), signal_at)
    first = min(signal_at.values())
    assert [r["part"] for r in results] == [first, first]  # every process stopped after the first signal
    assert [r["part_status"] for r in results] == ["interrupted"] * 2
    assert [r["resumed"] for r in results] == ["completed"] * 2
    full = _losses(tmp_path / "full")
    assert len(full) == 5
    assert _losses(tmp_path / "part") == pytest.approx(full, abs=1e-6)
    assert load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["step"] == 5
