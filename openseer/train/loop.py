"""The pretraining loop (dino ``train_one_epoch``, nanoGPT): setup, then per step collect the micro-batches,
:func:`~openseer.train.step.train_step`, log, checkpoint; at the end the summary and the exported backbone.

A run directory holds ``config.yaml`` (resolved), ``derived.json``, ``metrics.jsonl``, ``checkpoints/``,
``backbone.safetensors`` + ``backbone.json`` (the exported backbone) and ``summary.json``. Re-running with the
same directory resumes from the newest checkpoint; SIGTERM/SIGINT (e.g. a SLURM pre-emption) on any process
makes every process write the same checkpoint at the next step boundary before exiting.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from openseer import dist
from openseer.checkpoint import atomic_write, export_backbone, full_backbone_state
from openseer.config import Config
from openseer.logging_backends import sink_from_config
from openseer.models.backbone import backbone_spec
from openseer.run_state import ForcedStop, StopFlag, run_summary
from openseer.train.budget import budget_summary, plan_budget
from openseer.train.logger import MetricsLogger
from openseer.train.setup import Monitor, Run, setup_run
from openseer.train.step import TrainingError, train_step

log = logging.getLogger("openseer")


def pretrain(
    cfg: Config,
    out_dir: str | Path,
    resume: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    monitor: Monitor | None = None,
) -> dict[str, Any]:
    """Pretrain ``cfg.method`` on ``cfg.data.path``, writing everything into ``out_dir``; returns the summary.

    ``on_step(step, loss)`` is called after every optimizer step (for logging or tests); raising
    ``KeyboardInterrupt`` from it behaves like Ctrl-C (checkpoint, then stop). ``monitor(step, last,
    backbone)`` returns extra metrics for a logged row; by default it is the online kNN monitor that the
    ``monitor`` config section describes (`openseer.eval.monitor.KnnMonitor`; off unless monitor.train is set).
    With ``cfg.train.minutes`` a throughput probe first turns the minutes into steps (`openseer.train.budget`).
    """
    budget = plan_budget(cfg, Path(out_dir), pretrain) if cfg.train.minutes else None
    run = setup_run(cfg, out_dir, resume, monitor, budget["steps"] if budget else None)
    status = _train(run, on_step)
    return _finish(run, status, budget)


def stop_agreed(requested: bool, device: torch.device) -> bool:
    """True on every process when a stop was requested on any (a collective at each step boundary)."""
    if dist.world_size() == 1:
        return requested
    flag = torch.tensor(float(requested), device=device)
    return bool(dist.all_reduce_max(flag) > 0)


def _train(run: Run, on_step: Callable[[int, float], None] | None) -> str:
    """Steps until the schedule ends or a stop is requested: 'completed', 'interrupted' or 'collapsed'."""
    p, d = run.progress, run.derived
    logger = MetricsLogger(
        run.out / "metrics.jsonl", dist.is_main(), d.total_steps, p.step, run.cfg.train.log_every, run.started,
        run.monitor, sink_from_config(run.cfg, run.out, dist.is_main()), p.window, run.watch,
    )  # fmt: skip
    try:
        with StopFlag() as stop:
            stopped = False
            while p.step < d.total_steps and not stopped:
                stopped = _epoch(run, logger, stop, on_step)
    except ForcedStop:
        return "interrupted"  # a second signal mid-step: the state may be half-updated, keep the checkpoint
    except KeyboardInterrupt:  # raised between steps (e.g. by on_step): the state is consistent
        run.checkpointer.save(p, step_file=False)
        return "interrupted"
    finally:
        logger.close()
    if run.watch.stop_requested and p.step < d.total_steps:
        return "collapsed"  # train.stop_on_collapse: checkpointed like a stop request
    return "completed" if p.step >= d.total_steps else "interrupted"


def _note_batch(run: Run, batch: Any) -> None:
    """Unreadable images (counted skips) and conversions of one micro-batch."""
    p = run.progress
    for name, reason in batch.skipped:
        if name not in p.skipped:
            p.skipped[name] = reason
            log.warning("skipped unreadable image %s (%s)", name, reason)
    for kind, n in batch.conversions.items():
        p.conversions[kind] = p.conversions.get(kind, 0) + n


def _epoch(run: Run, logger: MetricsLogger, stop: StopFlag, on_step: Callable[[int, float], None] | None) -> bool:
    """The rest of the current epoch (or until a stop); True when the run must stop."""
    p, d, accumulate = run.progress, run.derived, run.cfg.train.accumulate_steps
    epoch, in_epoch = divmod(p.step, d.steps_per_epoch)
    run.sampler.set_epoch(epoch, in_epoch * accumulate)  # the sampler counts micro-batches
    micro_batches: list[Any] = []
    micro_indices: list[Any] = []
    for batch in run.loader:
        _note_batch(run, batch)
        micro_batches.append(batch.crops)
        micro_indices.append(batch.indices)
        if len(micro_batches) < accumulate:
            continue
        result = train_step(run.trainer, micro_batches, p.step, epoch, micro_indices)
        micro_batches, micro_indices = [], []
        _account(run, result)
        p.step += 1
        logger.record(p.step, epoch, result, d.global_batch, p.nonfinite_total, run.trainer.method.export_module())
        if on_step is not None:
            on_step(p.step, result.loss)
        _keep_best(run)
        stopping = stop_agreed(stop.requested or run.watch.stop_requested, run.trainer.device)
        last, end_of_epoch = p.step == d.total_steps, p.step % d.steps_per_epoch == 0
        every = p.step % run.cfg.train.checkpoint_every == 0
        if last or end_of_epoch or stopping or every:
            run.checkpointer.save(p, step_file=every)
        if last or end_of_epoch or stopping:
            return stopping
    return False


def _keep_best(run: Run) -> None:
    """With ``train.keep_best_label_free``: checkpoint a step that improved the best label-free score and keep it
    as ``best_label_free.pt`` (every process agrees: the checkpoint is collective)."""
    if run.cfg.train.keep_best_label_free and stop_agreed(run.watch.new_best, run.trainer.device):
        run.watch.new_best = False
        run.checkpointer.save(run.progress, step_file=False)
        run.checkpointer.keep_as_best_label_free()


def _account(run: Run, result: Any) -> None:
    """Count the step's loss; a non-finite step is skipped, and too many in a row abort the run."""
    p = run.progress
    p.losses.append(result.loss)
    if result.finite:
        p.consecutive_bad = 0
        return
    p.nonfinite_total += 1
    p.consecutive_bad += 1
    log.warning("step %d: non-finite loss or gradient (loss=%s); step skipped", p.step, result.loss)
    if p.consecutive_bad >= run.cfg.train.max_nonfinite_steps:
        raise TrainingError(
            f"{p.consecutive_bad} consecutive non-finite steps (last loss {result.loss}); try "
            f"train.precision=fp32, model.channels_last=false or a lower optim.base_lr"
        )


def _finish(run: Run, status: str, budget: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summary (and, for a completed run, the exported backbone); collectives: every process calls it."""
    cfg, p, method = run.cfg, run.progress, run.trainer.method
    skipped = dist.merge_dicts(p.skipped)
    summary = run_summary(cfg, run.derived, method, p.step, p.losses, skipped, p.nonfinite_total, status, run.started)
    summary["conversions"] = dist.sum_counts(p.conversions)
    summary.update(run.watch.summary(run.health))  # collapse warnings, best label-free step (rank 0's)
    if budget is not None:  # planned vs used: every segment of a resumed run, without the probe
        summary["budget"] = budget_summary(budget, p.seconds())
    # a consolidated backbone (gathered from the shards with FSDP: every process takes part)
    backbone_state = full_backbone_state(method, method.exported_backbone) if status == "completed" else None
    if dist.is_main():
        if backbone_state is not None:
            spec = {**backbone_spec(cfg.model), "exported": method.exported_backbone}
            export_backbone(run.out, backbone_state, spec)
        atomic_write(run.out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    return summary
