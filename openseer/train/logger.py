"""metrics.jsonl and the progress bar: the loop's only output while it runs (rank 0 writes, others stay quiet).

A row every ``train.log_every`` steps (and at the last): step, epoch, mean finite loss of the window, lr, wd,
images/s, seconds since start, non-finite steps so far, the method's named scalars (window means) and the
online monitor's metrics.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from openseer.train.step import StepResult


class MetricsLogger:
    """Owns ``metrics.jsonl`` (appended) and the tqdm bar; ``record`` once per optimizer step."""

    def __init__(
        self,
        path: Path,
        enabled: bool,
        total_steps: int,
        first_step: int,
        log_every: int,
        started: float,
        monitor: Callable[[int, bool, Any], dict[str, Any]] | None = None,
    ):
        self.enabled, self.log_every, self.started, self.monitor = enabled, log_every, started, monitor
        self.total_steps = total_steps
        self.bar = tqdm(
            total=total_steps,
            initial=first_step,
            disable=None if enabled else True,
            dynamic_ncols=True,
            desc="pretrain",
            file=sys.stderr,
        )
        self.file = open(path, "a") if enabled else None  # noqa: SIM115
        self._reset(time.time())

    def _reset(self, now: float) -> None:
        self.loss_sum, self.n_finite, self.images, self.window_start = 0.0, 0, 0, now
        self.scalars: dict[str, float] = {}
        self.n_steps = 0

    def record(
        self, step: int, epoch: int, result: StepResult, images: int, nonfinite_total: int, backbone: Any
    ) -> None:
        """Account the step that ended at ``step`` (1-based count); writes a row when one is due."""
        if result.finite:
            self.loss_sum, self.n_finite = self.loss_sum + result.loss, self.n_finite + 1
        for name, value in result.scalars.items():
            self.scalars[name] = self.scalars.get(name, 0.0) + value
        self.images += images
        self.n_steps += 1
        last = step == self.total_steps
        if self.enabled and (step % self.log_every == 0 or last):
            self._write(step, epoch, result, nonfinite_total, last, backbone)
        self.bar.update(1)

    def _write(
        self, step: int, epoch: int, result: StepResult, nonfinite_total: int, last: bool, backbone: Any
    ) -> None:
        now = time.time()
        rate = self.images / max(now - self.window_start, 1e-9)
        mean_loss = self.loss_sum / self.n_finite if self.n_finite else None  # None: all non-finite
        row = {
            "step": step,
            "epoch": epoch,
            "loss": mean_loss,
            "lr": result.lr,
            "wd": result.wd,
            "images_per_s": rate,
            "seconds": now - self.started,
            "nonfinite_steps": nonfinite_total,
        }
        row.update({name: total / self.n_steps for name, total in self.scalars.items()})
        if self.monitor is not None:  # online kNN; its time is kept out of the next window
            row.update(self.monitor(step, last, backbone))
            now = time.time()
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        shown = {name: f"{row[name]:.3g}" for name in self.scalars}
        self.bar.set_postfix(
            loss=f"{mean_loss or float('nan'):.3f}", lr=f"{result.lr:.3g}", img_s=f"{rate:.0f}", **shown
        )
        self._reset(now)

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
