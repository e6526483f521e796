"""Build everything a run needs, in order: resume state -> data -> derived sizes -> method -> parallel wrapping
-> optimizer and schedules -> checkpointer (restoring the checkpoint) -> run-directory files.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from openseer import dist
from openseer.checkpoint import atomic_write
from openseer.config import Config, ConfigError, Derived, derive, dump_yaml
from openseer.data.pipeline import build_pretrain_data
from openseer.eval.monitor import monitor_from_config
from openseer.methods.base import Method, ParamGroup, RunInfo, optimizer_groups
from openseer.methods.registry import get_method
from openseer.models.backbone import build_backbone
from openseer.ops import LARS, cosine_schedule
from openseer.parallel import prepare_model
from openseer.run_state import find_resume_state, resume_blockers, truncate_metrics
from openseer.train.checkpointer import Checkpointer, Progress
from openseer.train.health import CollapseWatch, HealthMonitor, health_from_config
from openseer.train.step import Trainer
from openseer.weights.sources import init_method_from

log = logging.getLogger("openseer")

Monitor = Callable[[int, bool, torch.nn.Module], dict[str, Any]]


@dataclass
class Run:
    """A run ready to train: its parts and where it stands."""

    cfg: Config
    out: Path
    started: float
    derived: Derived
    trainer: Trainer
    sampler: Any
    loader: Any
    checkpointer: Checkpointer
    progress: Progress
    monitor: Monitor | None
    health: HealthMonitor | None = None  # label-free health signals (rank 0; also inside ``monitor``)
    watch: CollapseWatch | None = None


def build_optimizer(cfg: Config, method: Method) -> tuple[torch.optim.Optimizer, list[ParamGroup]]:
    """The optimizer over the method's tagged parameter groups (lr and weight decay are set per step)."""
    groups = method.param_groups(method.named_parameters(), cfg.optim)
    opt_groups = optimizer_groups(groups, cfg.optim.weight_decay)
    o = cfg.optim
    if o.name == "lars":
        optimizer = LARS(
            opt_groups,
            lr=0.0,
            momentum=o.momentum,
            trust_coefficient=o.trust_coefficient,
            variant=o.lars_variant,
        )
    elif o.name == "adamw":
        optimizer = torch.optim.AdamW(opt_groups, lr=0.0, betas=(o.momentum, 0.999))
    else:
        optimizer = torch.optim.SGD(opt_groups, lr=0.0, momentum=o.momentum)
    return optimizer, groups


def build_trainer(
    cfg: Config, method: Method, derived: Derived, device: torch.device, info: RunInfo | None = None
) -> Trainer:
    """Wrap ``method`` (norms, activation checkpointing, DDP/FSDP2), then build the optimizer and schedules.

    ``info`` is the :class:`RunInfo` the method was built with (`setup_run` passes its one object, so the method
    and every step see the same sizes); None builds it from ``cfg`` and ``derived`` (a trainer on its own).
    """
    # FSDP replaces the parameters, so the optimizer is built afterwards
    model = prepare_model(method, cfg.parallel, device, cfg.train.precision)
    optimizer, groups = build_optimizer(cfg, method)
    o = cfg.optim
    wd_end = o.weight_decay if o.weight_decay_end is None else o.weight_decay_end
    return Trainer(
        method=method,
        model=model,
        optimizer=optimizer,
        groups=groups,
        lr_schedule=cosine_schedule(
            derived.peak_lr, derived.final_lr, derived.total_steps, derived.warmup_steps, o.warmup_start_lr
        ),
        wd_schedule=cosine_schedule(o.weight_decay, wd_end, derived.total_steps),
        info=info if info is not None else RunInfo.of(cfg, derived),
        peak_lr=derived.peak_lr,
        device=device,
        precision=cfg.train.precision,
        clip_grad=o.clip_grad,
        clip_mode=o.clip_mode,
        memory_format=torch.channels_last if cfg.model.channels_last else torch.contiguous_format,
        seed=cfg.train.seed,
    )


def _check_resumable(cfg: Config, out: Path, state: dict[str, Any] | None) -> None:
    """The checkpoint's config may differ from ``cfg`` (its pool-derived values filled in) only harmlessly."""
    diff = resume_blockers(state, cfg) if state is not None else []
    if diff:
        raise ConfigError(
            f"{out} holds a run with a different config ({', '.join(diff[:6])}); use another "
            f"--out, or the same settings to resume"
        )


def _monitor(cfg: Config, monitor: Monitor | None) -> Monitor | None:
    """The given monitor, else (rank 0) the online kNN monitor of the ``monitor`` config section."""
    if cfg.monitor.train and cfg.parallel.strategy == "fsdp" and dist.world_size() > 1:
        raise ConfigError(
            "the online kNN monitor (monitor.train/test) runs on rank 0 alone and cannot see an FSDP-sharded "
            "backbone; drop --monitor-* or use --strategy ddp"
        )
    if monitor is not None or not dist.is_main():
        return monitor
    return monitor_from_config(cfg)


def _with_health(run: Run) -> None:
    """Add the health monitor (rank 0) to the run's monitors and the collapse watch over its rows."""
    cfg, d = run.cfg, run.derived
    fsdp = cfg.parallel.strategy == "fsdp" and dist.world_size() > 1
    if cfg.train.keep_best_label_free and run.checkpointer.sharded:
        raise ConfigError("train.keep_best_label_free keeps a full checkpoint; use parallel.checkpoint_format=full")
    # with FSDP every process gets the same answer (off, or the error) before any data is read
    method = run.trainer.method  # unwrapped: its output embedding and probe signals join the backbone's
    run.health = health_from_config(cfg, d.steps_per_epoch, fsdp, method) if dist.is_main() or fsdp else None
    if run.health is not None:
        knn, health = run.monitor, run.health
        both: Monitor = lambda step, last, bb: {**knn(step, last, bb), **health(step, last, bb)}  # noqa: E731
        run.monitor = health if knn is None else both
    signals = method.collapse_signals()
    run.watch = CollapseWatch(signals, d.warmup_steps, cfg.train.stop_on_collapse, run.progress.health)


def _write_run_files(run: Run, num_images: int) -> None:
    cfg, out, d = run.cfg, run.out, run.derived
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(dump_yaml(cfg)))
    atomic_write(out / "derived.json", lambda tmp: Path(tmp).write_text(json.dumps(asdict(d), indent=2)))
    truncate_metrics(out / "metrics.jsonl", run.progress.step)
    log.info(
        "%d images, %d steps/epoch x %d epochs = %d steps, global batch %d, peak lr %.4g",
        num_images, d.steps_per_epoch, d.epochs, d.total_steps, d.global_batch, d.peak_lr,
    )  # fmt: skip


def setup_run(
    cfg: Config,
    out_dir: str | Path,
    resume: bool = True,
    monitor: Monitor | None = None,
    budget_steps: int | None = None,
) -> Run:
    """Everything :func:`openseer.train.pretrain` runs, restored from the run directory's checkpoint if any;
    ``budget_steps`` (a ``train.minutes`` budget) replace the epochs."""
    started = time.time()
    device = dist.init_distributed(cfg.train.device)
    out = Path(out_dir)
    state, sharded_dir = find_resume_state(out / "checkpoints") if resume else (None, None)
    monitor = _monitor(cfg, monitor)
    # folders, tars and file lists: EpochSampler + PretrainDataset; shard sets: a resumable ShardStream
    sampler, loader, num_images = build_pretrain_data(
        cfg, dist.rank(), dist.world_size(), device, (state or {}).get("data")
    )
    derived = derive(cfg, num_images, dist.world_size(), budget_steps)
    entry = get_method(cfg.method)
    if entry.resolve is not None:  # values derived from the pool, on the run's own copy (config.yaml holds them)
        cfg = copy.deepcopy(cfg)
        for note in entry.resolve(cfg, num_images, derived.global_batch):
            log.info(note)
    _check_resumable(cfg, out, state)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    info = RunInfo.of(cfg, derived)  # the one RunInfo of the run: the method's and the training step's
    method = entry.build(cfg, build_backbone(cfg.model), info)
    method.check_towers()  # the declared towers and EMA pairs fit the built modules (one-line ConfigError)
    if cfg.model.init and state is None:  # starting weights (--init); a resumed run has its own
        init_method_from(method, cfg.model.init, strict=cfg.model.init_strict, log=log.info)
    method = method.to(device).to(memory_format=memory_format)
    trainer = build_trainer(cfg, method, derived, device, info)
    sharded = cfg.parallel.checkpoint_format == "sharded" or (
        cfg.parallel.checkpoint_format == "auto" and cfg.parallel.strategy == "fsdp" and dist.world_size() > 1
    )
    checkpointer = Checkpointer(cfg, out / "checkpoints", trainer, sampler, sharded)
    progress = checkpointer.restore(state, sharded_dir) if state is not None else Progress()
    run = Run(cfg, out, started, derived, trainer, sampler, loader, checkpointer, progress, monitor)
    _with_health(run)
    if dist.is_main():
        _write_run_files(run, num_images)
    return run
