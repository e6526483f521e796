"""A resumed run writes the same metrics.jsonl rows as an uninterrupted one (timings aside): the open logging
window (sums since the last row) travels in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openseer.checkpoint import load_checkpoint
from openseer.config import load_config
from openseer.train import pretrain
from tests.helpers import TINY_OVERRIDES, write_images

TIMINGS = ("images_per_s", "seconds")
EXTRA = ["train.epochs=2", "train.log_every=4", "swav.queue_length=16", "swav.queue_start_epoch=0"]


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


@pytest.mark.parametrize("stop_at", [3, 5])
def test_metrics_rows_after_a_resume_equal_the_uninterrupted_runs(tmp_path, stop_at):
    """6 steps logged every 4 (rows at 4 and 6); stopped mid-window at ``stop_at``, then resumed."""
    data = write_images(tmp_path / "imgs", 24)

    def cfg():
        return load_config("demo", [*TINY_OVERRIDES, f"data.path={data}", *EXTRA])

    pretrain(cfg(), tmp_path / "full")

    def interrupt(step, loss):
        if step == stop_at:
            raise KeyboardInterrupt

    assert pretrain(cfg(), tmp_path / "resumed", on_step=interrupt)["status"] == "interrupted"
    window = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["log_window"]
    assert window["n_steps"] == stop_at % 4 and window["n_finite"] == stop_at % 4
    assert pretrain(cfg(), tmp_path / "resumed")["status"] == "completed"
    full, resumed = _rows(tmp_path / "full"), _rows(tmp_path / "resumed")
    assert [r["step"] for r in full] == [4, 6]
    assert resumed == full  # every field: loss, lr, wd, the method's scalars (exact on CPU)
