"""A wall-clock budget for one run: ``train.minutes`` / ``openseer pretrain --minutes M`` (Li et al. 2020,
"Budgeted Training: Rethinking Deep Neural Network Training Under Resource Constraints": a schedule must end at
the deadline, not be cut short by it).

Before the run, a throughput probe of the run's own config (:data:`PROBE_STEPS` optimizer steps in
``OUT/.probe``, removed afterwards; the first :data:`PROBE_WARMUP` untimed: start-up and the burst of
prefetched batches) measures images/s; ``minutes x 60 x images/s / global batch`` steps then replace the
epochs, so the lr and weight-decay cosines, warm-up caps and every per-step schedule span exactly the steps
that fit. The plan is kept in ``OUT/budget.json``: a resumed run reuses it (same schedule), and a run planned
for other minutes is refused in one line. ``openseer compare --minutes`` uses the same probe.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openseer import dist
from openseer.config import Config
from openseer.errors import ConfigError, TrainingError
from openseer.io import atomic_write_text

log = logging.getLogger("openseer")

PROBE_STEPS = 50  # optimizer steps of the throughput probe behind a wall-clock budget
PROBE_WARMUP = 20  # of which the first are not timed (start-up, and the burst of batches prefetched during it)
BUDGET_FILE = "budget.json"

#: ``pretrain(cfg, out_dir, resume=..., on_step=...)``: the probe runs the real loop (passed in, since the loop
#: itself plans its budget with this module).
PretrainFn = Callable[..., dict[str, Any]]


def steps_for_minutes(minutes: float, images_per_s: float, global_batch: int) -> int:
    """Optimizer steps that ``minutes`` of pretraining at ``images_per_s`` allow (at least 1)."""
    return max(1, int(minutes * 60 * images_per_s / global_batch))


def timed_steps(cfg: Config, scratch: Path, pretrain: PretrainFn) -> tuple[dict[str, Any], list[float]]:
    """Pretrain ``cfg`` afresh into ``scratch`` (removed before and after: never resumed, nothing left):
    its summary and the ``time.perf_counter()`` at the end of every optimizer step."""
    ends: list[float] = []
    _remove(scratch)  # left by a probe that was killed
    try:
        summary = pretrain(cfg, scratch, resume=False, on_step=lambda step, loss: ends.append(time.perf_counter()))
    finally:
        _remove(scratch)
    return summary, ends


def _remove(path: Path) -> None:
    """``rmtree`` by the first process only, between barriers (every process runs the probe together)."""
    dist.barrier()
    if dist.is_main():
        shutil.rmtree(path, ignore_errors=True)
    dist.barrier()


def window_images_per_s(ends: list[float], global_batch: int, first: int, last: int) -> float:
    """Images/s of steps ``first + 1 .. last`` (1-based), from the step end times of :func:`timed_steps`."""
    return (last - first) * global_batch / (ends[last - 1] - ends[first - 1])


def probe_throughput(cfg: Config, scratch: Path, pretrain: PretrainFn) -> dict[str, Any]:
    """Images/s of ``cfg``'s training step: :data:`PROBE_STEPS` steps into ``scratch`` (removed afterwards),
    timed from the end of step :data:`PROBE_WARMUP` to the end of the last, without the online monitor and
    health signals. Every process takes part; the first process's figure is everyone's."""
    probe = copy.deepcopy(cfg)
    probe.train.max_steps = PROBE_STEPS
    probe.train.epochs = max(probe.train.epochs, PROBE_STEPS)  # a small pool still gives the probe its steps
    probe.train.minutes = 0.0
    probe.monitor.train = probe.monitor.test = ""
    probe.train.health_every, probe.train.keep_best_label_free = 0, False  # no health probe set (a few % of a run)
    summary, ends = timed_steps(probe, scratch, pretrain)
    if summary["status"] != "completed" or len(ends) <= PROBE_WARMUP:
        raise TrainingError(f"the throughput probe of {cfg.method} did not complete ({len(ends)} steps)")
    batch = summary["global_batch"]
    measured = dict(images_per_s=window_images_per_s(ends, batch, PROBE_WARMUP, len(ends)), global_batch=batch)
    return dist.broadcast_object(measured)


def check_minutes(minutes: float, what: str = "--minutes") -> None:
    """A budget must be a finite, positive number of minutes."""
    if not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"{what} must be a positive number of minutes, got {minutes}")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def plan_budget(cfg: Config, out: Path, pretrain: PretrainFn) -> dict[str, Any]:
    """The steps that ``cfg.train.minutes`` allow, from ``out/budget.json`` or a fresh probe (written there)."""
    minutes = cfg.train.minutes
    check_minutes(minutes, "train.minutes")
    kept = _read(out / BUDGET_FILE)
    if kept is not None:
        if kept.get("minutes") != minutes:
            raise ConfigError(
                f"{out} holds a run planned for {kept.get('minutes')} minutes; use another --out, or "
                f"--minutes {kept.get('minutes')} to resume it"
            )
        return kept
    if any((out / "checkpoints").glob("*")):
        raise ConfigError(f"{out} holds a run started without a time budget; use another --out for --minutes")
    dist.init_distributed(cfg.train.device)
    log.info("probing the throughput (%d steps) for a budget of %g minutes", PROBE_STEPS, minutes)
    started = time.time()
    measured = probe_throughput(cfg, out / ".probe", pretrain)
    steps = steps_for_minutes(minutes, measured["images_per_s"], measured["global_batch"])
    if minutes * 60 * measured["images_per_s"] < measured["global_batch"]:
        raise ConfigError(
            f"train.minutes={minutes} fits no optimizer step: one step of {measured['global_batch']} images "
            f"takes {measured['global_batch'] / measured['images_per_s']:.1f} s here"
        )
    budget = dict(minutes=minutes, probe_steps=PROBE_STEPS, probe_seconds=time.time() - started, **measured)
    budget["steps"] = steps
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / BUDGET_FILE, json.dumps(budget, indent=2))
    log.info("budget: %d steps of %d images in %g minutes", steps, measured["global_batch"], minutes)
    return budget


def budget_summary(budget: dict[str, Any], train_seconds: float) -> dict[str, Any]:
    """The ``summary.json`` entry: the plan next to the time pretraining took (every segment of a resumed run)."""
    return {**budget, "used_minutes": train_seconds / 60}
