"""Run-directory bookkeeping for the training loop: what may change on resume, where to resume from, RNG
state, stop signals, metrics truncation, and the run summary. `openseer.train` holds the loop itself.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from openseer import dist
from openseer.checkpoint import atomic_write, latest_sharded_checkpoint, load_checkpoint, load_sharded_meta
from openseer.config import Config, ConfigError, Derived, config_from_dict, global_batch_size, to_dict

log = logging.getLogger("openseer")

# Settings that may change between an interrupted run and its resumption; anything else must match.
RESUMABLE_CHANGES = {
    "train.max_steps",
    "train.epochs",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.max_nonfinite_steps",
    "data.num_workers",
    "data.path",
    "train.device",
    "monitor.train",
    "monitor.test",
    "monitor.every",
    "monitor.k",
    "monitor.max_train",
    "monitor.max_test",
}



def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def resume_blockers(state: dict[str, Any], cfg: Config) -> list[str]:
    """Config changes that forbid resuming ``state``. How the run is executed (parallel.*) may change, and so
    may the split of the global batch into processes x micro-batches, as long as the global batch is the same.
    """
    old = state["config"]
    # a field added since the checkpoint was written counts as its default (e.g. optim.weight_decay_end)
    defaults = _flatten(to_dict(Config()))
    old = _unflatten({**{k: v for k, v in defaults.items() if k.split(".")[0] in old}, **_flatten(old)})
    diff = [k for k in config_differences(old, to_dict(cfg)) if k not in RESUMABLE_CHANGES]
    diff = [k for k in diff if not k.startswith("parallel.")]
    old_train = old.get("train", {})
    old_global = old_train.get("batch_size", 0) * state.get("world_size", 1)
    old_global *= old_train.get("accumulate_steps", 1)
    new_global = global_batch_size(cfg, dist.world_size())
    if old_global == new_global:
        diff = [k for k in diff if k not in ("train.batch_size", "train.accumulate_steps")]
    elif "train.batch_size" not in diff:
        diff.append(f"global batch {old_global} -> {new_global}")
    return diff


def find_resume_state(ckpt_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The newest checkpoint of a run dir: (its state or meta, the sharded directory or None)."""
    full = load_checkpoint(ckpt_dir / "last.pt") if (ckpt_dir / "last.pt").is_file() else None
    sharded_dir = latest_sharded_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    sharded = load_sharded_meta(sharded_dir) if sharded_dir is not None else None
    if sharded is not None and (full is None or sharded["step"] >= full["step"]):
        return sharded, sharded_dir
    return full, None


class ForcedStop(KeyboardInterrupt):
    pass


class StopFlag:
    """Turns SIGTERM/SIGINT into a checkpoint at the next step boundary (installed in the main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if sys.platform != "win32" and _is_main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: give up immediately, without a checkpoint
            raise ForcedStop
        log.warning("signal %s: writing a checkpoint at the end of this step, then stopping", signum)
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metrics lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= last_step
    ]
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))


def run_summary(
    cfg: Config,
    derived: Derived,
    method: Any,
    step: int,
    losses: list[float],
    skipped: dict[str, str],
    nonfinite: int,
    status: str,
    started: float,
) -> dict[str, Any]:
    tail = [x for x in losses[-max(1, len(losses) // 10) :] if math.isfinite(x)]
    reasons: dict[str, int] = {}
    for reason in skipped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "status": status,
        "steps": step,
        "total_steps": derived.total_steps,
        "epochs": derived.epochs,
        "global_batch": derived.global_batch,
        "final_loss": tail[-1] if tail else None,
        "final_loss_mean": sum(tail) / len(tail) if tail else None,
        "uniform_loss": method.trivial_loss(),  # e.g. ln K for SwAV; None if undefined
        "nonfinite_steps": nonfinite,
        "skipped_images": len(skipped),
        "skipped_by_reason": reasons,
        "skipped": skipped,
        "seconds": time.time() - started,
        "backbone": cfg.model.backbone if not cfg.model.regnet_depth else "regnet",
    }


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config of a run directory."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml (is it an openseer run directory?)")
    return config_from_dict(yaml.safe_load(path.read_text()) or {})
