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
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from openseer import dist
from openseer.checkpoint import (
    LATEST,
    CheckpointError,
    latest_sharded_checkpoint,
    load_checkpoint,
    load_sharded_meta,
    sharded_checkpoint_problem,
)
from openseer.config import (
    Config,
    ConfigError,
    Derived,
    config_from_dict,
    global_batch,
    global_batch_size,
    resumable_keys,
    to_dict,
    upgrade_keys,
)
from openseer.io import atomic_write_text

log = logging.getLogger("openseer")


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
    old = upgrade_keys(state["config"])
    # a field added since the checkpoint was written counts as its default (e.g. optim.weight_decay_end)
    defaults = _flatten(to_dict(Config()))
    old = _unflatten({**{k: v for k, v in defaults.items() if k.split(".")[0] in old}, **_flatten(old)})
    resumable = resumable_keys()  # declared on the config fields (how the run is executed, its length, ...)
    diff = [k for k in config_differences(old, to_dict(cfg)) if k not in resumable]
    old_train = old.get("train", {})
    old_global = global_batch(
        old_train.get("batch_size", 0), state.get("world_size", 1), old_train.get("accumulate_steps", 1)
    )
    new_global = global_batch_size(cfg, dist.world_size())
    if old_global == new_global:
        diff = [k for k in diff if k not in ("train.batch_size", "train.accumulate_steps")]
    elif "train.batch_size" not in diff:
        diff.append(f"global batch {old_global} -> {new_global}")
    return diff


def find_resume_state(ckpt_dir: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The newest intact checkpoint of a run dir: (its state or meta, the sharded directory or None).

    Candidates, newest first: ``last.pt`` then ``step_*.pt`` (full checkpoints), and the directory ``LATEST``
    names then the other ``step_*/`` directories (sharded). A candidate that is truncated, empty, not a
    training checkpoint or (sharded) missing a shard is passed over for the next older one, and one log line
    says which was used and why; the newer of the best full and best sharded checkpoint wins.

    Returns:
        (None, None) when the folder holds no checkpoint at all (a fresh run).

    Raises:
        CheckpointError: checkpoints exist but none can be resumed from (one line naming each file and why),
            so that a run never silently starts again from scratch.
    """
    problems: list[str] = []
    full, full_path = _newest_intact_full(ckpt_dir, problems)
    sharded, sharded_dir = _newest_intact_sharded(ckpt_dir, problems)
    if full is None and sharded is None:
        if problems:
            raise CheckpointError(
                f"no usable checkpoint in {ckpt_dir} ({'; '.join(problems)}); move the folder away to start "
                f"afresh, or restore a checkpoint"
            )
        return None, None
    if sharded is not None and (full is None or sharded["step"] >= full["step"]):
        state, used = sharded, sharded_dir
    else:
        state, used = full, full_path
    if problems and dist.is_main():
        log.warning(
            "resuming from the newest intact checkpoint %s (step %d); passed over: %s",
            used,
            state["step"],
            "; ".join(problems),
        )
    return state, (sharded_dir if state is sharded else None)


#: What a full training checkpoint must hold to be resumed from.
_RESUME_KEYS = ("model", "optimizer", "step", "config", "rng")


def _step_of(path: Path) -> int:
    digits = path.name.split("_", 1)[-1].split(".", 1)[0]
    return int(digits) if digits.isdigit() else -1


def _newest_intact_full(ckpt_dir: Path, problems: list[str]) -> tuple[dict[str, Any] | None, Path | None]:
    if not ckpt_dir.is_dir():
        return None, None
    steps = sorted((p for p in ckpt_dir.glob("step_*.pt") if p.is_file()), key=_step_of, reverse=True)
    last = [ckpt_dir / "last.pt"] if (ckpt_dir / "last.pt").is_file() else []
    for path in last + steps:
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        missing = [k for k in _RESUME_KEYS if k not in state]
        if missing:
            problems.append(f"{path} is not a training checkpoint (no {', '.join(missing)})")
            continue
        return state, path
    return None, None


def _newest_intact_sharded(ckpt_dir: Path, problems: list[str]) -> tuple[dict[str, Any] | None, Path | None]:
    if not ckpt_dir.is_dir():
        return None, None
    dirs = sorted((p for p in ckpt_dir.glob("step_*") if p.is_dir()), key=_step_of, reverse=True)
    try:
        pointed = latest_sharded_checkpoint(ckpt_dir)
    except CheckpointError as e:
        problems.append(str(e))
        pointed = None
    if pointed is None and (ckpt_dir / LATEST).is_file() and not dirs:
        problems.append(f"{ckpt_dir / LATEST} points at no sharded checkpoint")
    candidates = ([pointed] if pointed is not None else []) + [d for d in dirs if d != pointed]
    for path in candidates:
        problem = sharded_checkpoint_problem(path)
        if problem is None:
            meta = load_sharded_meta(path)
            if "step" in meta and "rng" in meta:
                return meta, path
            problem = f"{path / 'meta.pt'} is not a training checkpoint (no step or rng)"
        problems.append(problem)
    return None, None


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
    kept = [line for line in path.read_text(errors="replace").splitlines() if _row_step(line) <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _row_step(line: str) -> float:
    """The step of a metrics line; a torn line (the process was killed mid-write) counts as after any step."""
    try:
        row = json.loads(line)
    except ValueError:
        return math.inf
    return row.get("step", 0) if isinstance(row, dict) else math.inf


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
        "backbone": cfg.model.backbone if not cfg.model.regnet.depth else "regnet",
    }


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config of a run directory."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml (is it an openseer run directory?)")
    return config_from_dict(yaml.safe_load(path.read_text()) or {})
