"""Training checkpoints: full (``last.pt`` by rank 0) or sharded (torch.distributed.checkpoint), with the
loop's progress, the RNG and data-stream state, and the method's extra state (e.g. SwAV's queue), which is
gathered into one process-independent object so that a run can resume on another number of processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openseer import dist
from openseer.checkpoint import load_sharded_checkpoint, save_checkpoint, save_sharded_checkpoint
from openseer.config import Config, to_dict
from openseer.methods.base import StepContext
from openseer.models.backbone import backbone_spec
from openseer.run_state import rng_state, set_rng_state
from openseer.train.health import new_health_state
from openseer.train.logger import LogWindow
from openseer.train.step import Trainer

log = logging.getLogger("openseer")

# Checkpoints before the method contract (format <= 2) kept the method's extra state under this key.
LEGACY_EXTRA_KEYS = ("queue",)


@dataclass
class Progress:
    """The loop's counters; all of them travel in the checkpoint."""

    step: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable image -> reason (this process)
    conversions: dict[str, int] = field(default_factory=dict)  # images converted, per kind (this process)
    nonfinite_total: int = 0
    consecutive_bad: int = 0
    losses: list[float] = field(default_factory=list)  # per step since start/resume
    window: LogWindow = field(default_factory=LogWindow)  # the metrics row being summed (rank 0's is kept)
    health: dict[str, Any] = field(default_factory=new_health_state)  # CollapseWatch's (rank 0's is kept)
    seconds_before: float = 0.0  # wall time of the run's earlier segments (before this resume)
    started: float = field(default_factory=time.time)  # when this segment began

    def seconds(self) -> float:
        """Wall time of the whole run so far, over every resumed segment."""
        return self.seconds_before + time.time() - self.started


class Checkpointer:
    """Writes and restores the training state of one run directory (``<out>/checkpoints``)."""

    def __init__(self, cfg: Config, ckpt_dir: Path, trainer: Trainer, sampler: Any, sharded: bool):
        self.cfg, self.dir, self.trainer, self.sampler, self.sharded = cfg, ckpt_dir, trainer, sampler, sharded

    def _ctx(self, step: int) -> StepContext:
        info = self.trainer.info
        return StepContext(step=step, epoch=step // info.steps_per_epoch, info=info)

    def _meta(self, progress: Progress) -> dict[str, Any]:
        """Everything but model and optimizer (collectives inside: every process must call it)."""
        extra = self.trainer.method.global_extra_state(self._ctx(progress.step)) or {}
        scaler = self.trainer.scaler
        meta = {
            "world_size": dist.world_size(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "step": progress.step,
            "rng": rng_state(),
            "config": to_dict(self.cfg),
            # "exported": the method's submodule to evaluate ("teacher.backbone" for DINO)
            "backbone_spec": {**backbone_spec(self.cfg.model), "exported": self.trainer.method.exported_backbone},
            "skipped": dist.merge_dicts(progress.skipped),
            "nonfinite_steps": progress.nonfinite_total,
            "data": self.sampler.state() if hasattr(self.sampler, "state") else None,  # stream position
            "format": 2 if self.sharded else 1,
            "conversions": dist.sum_counts(progress.conversions),
            "extra_state_keys": sorted(extra),
            "log_window": progress.window.state(),
            "health": progress.health,
            "seconds": progress.seconds(),
        }
        clash = set(extra) & set(meta) | set(extra) & {"model", "optimizer"}
        if clash:
            raise ValueError(f"method extra state {sorted(clash)} clashes with checkpoint keys")
        return {**meta, **extra}

    def save(self, progress: Progress, step_file: bool) -> None:
        """Checkpoint at ``progress.step``; ``step_file`` also keeps it as ``step_<n>`` (keep_checkpoints)."""
        meta = self._meta(progress)
        method, optimizer = self.trainer.method, self.trainer.optimizer
        if self.sharded:
            save_sharded_checkpoint(self.dir, f"step_{progress.step:08d}", method, optimizer, meta)
            if dist.is_main():  # the newest (LATEST) plus keep_checkpoints older ones
                old = sorted(p for p in self.dir.glob("step_*") if p.is_dir())
                for p in old[: max(len(old) - self.cfg.train.keep_checkpoints - 1, 0)]:
                    shutil.rmtree(p, ignore_errors=True)
            return
        if dist.is_main():
            self._save_full({"model": method.state_dict(), "optimizer": optimizer.state_dict(), **meta}, step_file)

    def _save_full(self, ckpt: dict[str, Any], step_file: bool) -> None:
        save_checkpoint(self.dir / "last.pt", ckpt)
        if not step_file:
            return
        named = self.dir / f"step_{ckpt['step']:08d}.pt"
        try:  # a hard link costs no second write
            tmp = self.dir / f".{named.name}.link"
            tmp.unlink(missing_ok=True)
            os.link(self.dir / "last.pt", tmp)
            os.replace(tmp, named)
        except OSError:
            save_checkpoint(named, ckpt)
        old = sorted(self.dir.glob("step_*.pt"))
        for p in old[: max(len(old) - self.cfg.train.keep_checkpoints, 0)]:
            p.unlink(missing_ok=True)

    def keep_as_best_label_free(self) -> None:
        """Keep ``last.pt`` (just written) as ``best_label_free.pt`` too (a hard link where possible)."""
        if not dist.is_main():
            return
        best, tmp = self.dir / "best_label_free.pt", self.dir / ".best_label_free.pt.link"
        try:
            tmp.unlink(missing_ok=True)
            os.link(self.dir / "last.pt", tmp)
            os.replace(tmp, best)
        except OSError:
            shutil.copyfile(self.dir / "last.pt", tmp)
            os.replace(tmp, best)

    def restore(self, state: dict[str, Any], sharded_dir: Path | None) -> Progress:
        """Load a checkpoint found by :func:`openseer.run_state.find_resume_state`; returns its progress."""
        method, optimizer = self.trainer.method, self.trainer.optimizer
        if sharded_dir is not None:
            load_sharded_checkpoint(sharded_dir, method, optimizer)
        else:
            method.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        keys = state.get("extra_state_keys", LEGACY_EXTRA_KEYS)
        extra = {k: state[k] for k in keys if state.get(k) is not None}
        if extra:
            method.load_global_extra_state(extra, self._ctx(state["step"]))
        if state.get("scaler"):
            self.trainer.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        progress = Progress(
            step=state["step"],
            skipped=dict(state.get("skipped", {})),
            # the checkpoint holds the sum over processes: rank 0 carries it on
            # ("input_counts" in checkpoints written before the key was renamed)
            conversions=dict(state.get("conversions", state.get("input_counts", {}))) if dist.is_main() else {},
            nonfinite_total=state.get("nonfinite_steps", 0),
            window=LogWindow.from_state(state.get("log_window")),
            health=state.get("health") or new_health_state(),
            seconds_before=float(state.get("seconds", 0.0)),
        )
        if dist.is_main():
            log.info("resumed from %s at step %d", sharded_dir or self.dir / "last.pt", progress.step)
        return progress
