"""metrics.jsonl and the progress bar: the loop's only output while it runs (rank 0 writes, others stay quiet).

A row every ``train.log_every`` steps (and at the last): step, epoch, mean finite loss of the window, lr, wd,
images/s, seconds since start, non-finite steps so far, the method's named scalars (window means) and the
online monitors' metrics (kNN, health signals), which a ``watch`` then reads for collapse. The open window's
sums (:class:`LogWindow`) travel in every checkpoint, so a resumed
run writes the same rows as an uninterrupted one (all but the timings: images/s counts the steps since resume).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from openseer.checkpoint import CheckpointWriteError
from openseer.logging_backends import MetricsSink, NullSink
from openseer.train.step import StepResult


@dataclass
class LogWindow:
    """The sums of the steps since the last metrics row; checkpointed with the loop's progress."""

    loss_sum: float = 0.0
    n_finite: int = 0  # finite steps (the loss mean's denominator)
    n_steps: int = 0  # all steps (the scalars' denominator)
    scalars: dict[str, float] = field(default_factory=dict)

    def add(self, result: StepResult) -> None:
        if result.finite:
            self.loss_sum, self.n_finite = self.loss_sum + result.loss, self.n_finite + 1
        for name, value in result.scalars.items():
            self.scalars[name] = self.scalars.get(name, 0.0) + value
        self.n_steps += 1

    def clear(self) -> None:
        self.loss_sum, self.n_finite, self.n_steps, self.scalars = 0.0, 0, 0, {}

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> LogWindow:
        """The window of a checkpoint (an empty one for checkpoints written before windows were kept)."""
        if not state:
            return cls()
        return cls(float(state["loss_sum"]), int(state["n_finite"]), int(state["n_steps"]), dict(state["scalars"]))


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
        sink: MetricsSink | None = None,
        window: LogWindow | None = None,
        watch: Any = None,
    ):
        self.enabled, self.log_every, self.started, self.monitor = enabled, log_every, started, monitor
        self.watch = watch  # CollapseWatch (openseer.train.health): reads every row
        self.sink = sink or NullSink()  # TensorBoard / W&B (log.* config): the same rows as metrics.jsonl
        self.total_steps = total_steps
        self.bar = tqdm(
            total=total_steps,
            initial=first_step,
            disable=None if enabled else True,
            dynamic_ncols=True,
            desc="pretrain",
            file=sys.stderr,
        )
        # unbuffered: a failed write (disk full) fails here, once, not again when the file is closed
        self.path = path
        self.file = open(path, "ab", buffering=0) if enabled else None  # noqa: SIM115
        self.window = window if window is not None else LogWindow()  # may hold steps from before a resume
        self.images, self.window_start = 0, time.time()

    def _reset(self, now: float) -> None:
        self.window.clear()
        self.images, self.window_start = 0, now

    def record(
        self, step: int, epoch: int, result: StepResult, images: int, nonfinite_total: int, backbone: Any
    ) -> None:
        """Account the step that ended at ``step`` (1-based count); writes a row when one is due."""
        self.window.add(result)
        self.images += images
        last = step == self.total_steps
        if self.enabled and (step % self.log_every == 0 or last):
            self._write(step, epoch, result, nonfinite_total, last, backbone)
        self.bar.update(1)

    def _write(
        self, step: int, epoch: int, result: StepResult, nonfinite_total: int, last: bool, backbone: Any
    ) -> None:
        now = time.time()
        rate = self.images / max(now - self.window_start, 1e-9)
        w = self.window
        mean_loss = w.loss_sum / w.n_finite if w.n_finite else None  # None: all non-finite
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
        row.update({name: total / w.n_steps for name, total in w.scalars.items()})
        if self.monitor is not None:  # online kNN; its time is kept out of the next window
            row.update(self.monitor(step, last, backbone))
            now = time.time()
        if self.watch is not None:
            self.watch.observe(row)
        try:
            self.file.write((json.dumps(row) + "\n").encode())
        except OSError as e:  # one line naming the file and errno; checkpoints are intact
            raise CheckpointWriteError(self.path, e) from None
        self.sink.log(step, row)
        shown = {name: f"{row[name]:.3g}" for name in w.scalars}
        if "health_rankme" in row:  # short fields for the health signals: backbone and output RankMe
            shown["rankme"] = f"{row['health_rankme']:.3g}"
        if "health_head_rankme" in row:
            shown["head_rankme"] = f"{row['health_head_rankme']:.3g}"
        self.bar.set_postfix(
            loss=f"{mean_loss or float('nan'):.3f}", lr=f"{result.lr:.3g}", img_s=f"{rate:.0f}", **shown
        )
        self._reset(now)

    def close(self) -> None:
        self.bar.close()
        self.sink.close()
        if self.file is not None:
            self.file.close()
