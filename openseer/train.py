"""The pretraining loop: one explicit function, read top to bottom (dino ``train_one_epoch``, nanoGPT).

Per step: set lr/wd from the schedules -> method.before_step -> autocast forward -> non-finite check ->
backward (scaler) -> gradient norm (+clip) -> optimizer step -> metrics -> atomic checkpoint.

A run directory holds ``config.yaml`` (resolved), ``derived.json``, ``metrics.jsonl``, ``checkpoints/``,
``backbone.safetensors`` + ``backbone.json`` (the exported backbone) and ``summary.json``. Re-running with the
same directory resumes from ``checkpoints/last.pt``; SIGTERM/SIGINT (e.g. a SLURM pre-emption) writes a
checkpoint at the next step boundary before exiting.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from openseer import dist
from openseer.checkpoint import (
    CheckpointWriteError,
    atomic_write,
    export_backbone_state,
    full_backbone_state,
    load_sharded_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from openseer.config import Config, ConfigError, derive, dump_yaml, to_dict
from openseer.methods import METHODS
from openseer.models.backbone import backbone_spec, build_backbone
from openseer.ops import LARS, cosine_schedule, param_groups
from openseer.parallel import clip_grads, grad_norm, no_gradient_sync, prepare_model
from openseer.run_state import (
    ForcedStop,
    StopFlag,
    find_resume_state,
    resume_blockers,
    rng_state,
    run_summary,
    set_rng_state,
    truncate_metrics,
)

log = logging.getLogger("openseer")


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. repeated non-finite losses); reported as one line."""


def _build_optimizer(cfg: Config, model: torch.nn.Module, prefixes: dict[str, str]) -> torch.optim.Optimizer:
    groups = param_groups(model.named_parameters(), cfg.optim.weight_decay, prefixes)
    if cfg.optim.name == "lars":
        return LARS(
            groups, lr=0.0, momentum=cfg.optim.momentum, trust_coefficient=cfg.optim.trust_coefficient
        )
    return torch.optim.SGD(groups, lr=0.0, momentum=cfg.optim.momentum)


def pretrain(
    cfg: Config,
    out_dir: str | Path,
    resume: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    monitor: Callable[[int, bool, torch.nn.Module], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Pretrain ``cfg.method`` on ``cfg.data.path``, writing everything into ``out_dir``; returns the summary.

    ``on_step(step, loss)`` is called after every optimizer step (for logging or tests); raising
    ``KeyboardInterrupt`` from it behaves like Ctrl-C (checkpoint, then stop). ``monitor(step, last,
    backbone)`` returns extra metrics for a logged row; by default it is the online kNN monitor that the
    ``monitor`` config section describes (`openseer.eval.monitor.KnnMonitor`; off unless monitor.train is set).
    """
    from openseer.data.pipeline import build_pretrain_data

    started = time.time()
    device = dist.init_distributed(cfg.train.device)
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    is_main = dist.is_main()

    # ---- resume bookkeeping: the saved config wins over nothing; differences must be harmless --------------
    state, sharded_dir = find_resume_state(ckpt_dir) if resume else (None, None)
    if state is not None:
        diff = resume_blockers(state, cfg)
        if diff:
            raise ConfigError(
                f"{out} holds a run with a different config ({', '.join(diff[:6])}); use another "
                f"--out, or the same settings to resume"
            )

    if cfg.monitor.train and cfg.parallel.strategy == "fsdp" and dist.world_size() > 1:
        raise ConfigError(
            "the online kNN monitor (monitor.train/test) runs on rank 0 alone and cannot see an FSDP-sharded "
            "backbone; drop --monitor-* or use --strategy ddp"
        )
    if monitor is None and is_main:
        from openseer.eval.monitor import monitor_from_config

        monitor = monitor_from_config(cfg)

    # ---- data --------------------------------------------------------------------------------------------
    # folders, tars and file lists: EpochSampler + PretrainDataset; shard sets: a resumable ShardStream
    resumed_from = (state or {}).get("data")
    sampler, loader, num_images = build_pretrain_data(
        cfg, dist.rank(), dist.world_size(), device, resumed_from
    )
    derived = derive(cfg, num_images, dist.world_size())

    # ---- model, optimizer, schedules ---------------------------------------------------------------------
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    method_mod = METHODS[cfg.method]
    method = method_mod.build(cfg, build_backbone(cfg.model), derived.global_batch).to(device)
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    method = method.to(memory_format=memory_format)
    # norms, activation checkpointing, DDP/FSDP2 from outside the method; FSDP replaces the parameters, so
    # the optimizer is built afterwards
    model = prepare_model(method, cfg.parallel, device, cfg.train.precision)
    optimizer = _build_optimizer(cfg, method, method.param_group_prefixes())
    sharded = cfg.parallel.checkpoint_format == "sharded" or (
        cfg.parallel.checkpoint_format == "auto" and cfg.parallel.strategy == "fsdp" and dist.world_size() > 1
    )
    accumulate = cfg.train.accumulate_steps
    lr_schedule = cosine_schedule(
        derived.peak_lr,
        derived.final_lr,
        derived.total_steps,
        derived.warmup_steps,
        cfg.optim.warmup_start_lr,
    )
    multipliers = method.lr_multipliers(derived.total_steps)
    precision = cfg.train.precision
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    step, skipped, nonfinite_total = 0, {}, 0
    converted: dict[str, int] = {}  # images that needed a conversion, per kind (this process since start/resume)
    if state is not None:
        if sharded_dir is not None:
            load_sharded_checkpoint(sharded_dir, method, optimizer)
        else:
            method.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        if state.get("queue") is not None and hasattr(method, "load_global_queue_state"):
            method.load_global_queue_state(state["queue"], cfg.train.batch_size * accumulate)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, skipped = state["step"], dict(state.get("skipped", {}))
        if is_main:  # the checkpoint holds the sum over processes
            converted = dict(state.get("input_counts", {}))
        nonfinite_total = state.get("nonfinite_steps", 0)
        if is_main:
            log.info("resumed from %s at step %d", sharded_dir or ckpt_dir / "last.pt", step)

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(dump_yaml(cfg)))
        atomic_write(
            out / "derived.json", lambda tmp: Path(tmp).write_text(json.dumps(asdict(derived), indent=2))
        )
        truncate_metrics(out / "metrics.jsonl", step)
        log.info(
            "%d images, %d steps/epoch x %d epochs = %d steps, global batch %d, peak lr %.4g",
            num_images,
            derived.steps_per_epoch,
            derived.epochs,
            derived.total_steps,
            derived.global_batch,
            derived.peak_lr,
        )

    def checkpoint(step_file: bool) -> None:
        # the queue of every process, as one, and the summed input counts (collectives: before any rank returns)
        has_queue = hasattr(method, "global_queue_state")
        queue = method.global_queue_state(cfg.train.batch_size * accumulate) if has_queue else None
        counts = dist.sum_counts(converted)
        skipped_everywhere = dist.merge_dicts(skipped)
        if sharded:
            meta = {**_checkpoint_meta(skipped_everywhere), "queue": queue, "input_counts": counts}
            save_sharded_checkpoint(ckpt_dir, f"step_{step:08d}", method, optimizer, meta)
            if is_main:  # the newest (LATEST) plus keep_checkpoints older ones
                old = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
                for p in old[: max(len(old) - cfg.train.keep_checkpoints - 1, 0)]:
                    shutil.rmtree(p, ignore_errors=True)
            return
        if not is_main:
            return
        ckpt = {
            "model": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            **_checkpoint_meta(skipped_everywhere),
            "queue": queue,
            "input_counts": counts,
        }
        _save_full(ckpt, step_file)

    def _checkpoint_meta(skipped_everywhere: dict[str, str]) -> dict[str, Any]:
        return {
            "world_size": dist.world_size(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "step": step,
            "rng": rng_state(),
            "config": to_dict(cfg),
            "backbone_spec": backbone_spec(cfg.model),
            "skipped": skipped_everywhere,
            "nonfinite_steps": nonfinite_total,
            "data": sampler.state() if hasattr(sampler, "state") else None,  # stream position and layout
            "format": 2 if sharded else 1,
        }

    def _save_full(ckpt: dict[str, Any], step_file: bool) -> None:
        save_checkpoint(ckpt_dir / "last.pt", ckpt)
        if step_file:
            named = ckpt_dir / f"step_{step:08d}.pt"
            try:  # a hard link costs no second write
                tmp = ckpt_dir / f".{named.name}.link"
                tmp.unlink(missing_ok=True)
                os.link(ckpt_dir / "last.pt", tmp)
                os.replace(tmp, named)
            except OSError:
                save_checkpoint(named, ckpt)
            old = sorted(ckpt_dir.glob("step_*.pt"))
            for p in old[: max(len(old) - cfg.train.keep_checkpoints, 0)]:  # (a negative end would delete)
                p.unlink(missing_ok=True)

    # ---- the loop ----------------------------------------------------------------------------------------
    from tqdm import tqdm

    bar = tqdm(
        total=derived.total_steps,
        initial=step,
        disable=None if is_main else True,
        dynamic_ncols=True,
        desc="pretrain",
        file=sys.stderr,
    )
    # unbuffered: a failed write (disk full) fails here, once, not again when the file is closed
    metrics_file = open(out / "metrics.jsonl", "ab", buffering=0) if is_main else None  # noqa: SIM115
    consecutive_bad, window_loss, window_n, window_images, window_start = 0, 0.0, 0, 0, time.time()
    losses: list[float] = []
    status = "completed"
    try:
        with StopFlag() as stop:
            while step < derived.total_steps and not stop.requested:
                epoch, in_epoch = divmod(step, derived.steps_per_epoch)
                sampler.set_epoch(epoch, in_epoch * accumulate)  # the sampler counts micro-batches
                micro_batches: list[Any] = []
                for batch in loader:
                    for name, reason in batch.skipped:
                        if name not in skipped:
                            skipped[name] = reason
                            log.warning("skipped unreadable image %s (%s)", name, reason)
                    for note, n in batch.notes.items():
                        converted[note] = converted.get(note, 0) + n
                    micro_batches.append(batch)
                    if len(micro_batches) < accumulate:
                        continue
                    lr = float(lr_schedule[step])
                    for group in optimizer.param_groups:
                        mult = multipliers.get(group["name"])
                        group["lr"] = lr * (float(mult[step]) if mult is not None else 1.0)
                    method.before_step()
                    # k micro-batches: each backward adds loss/k, gradients are all-reduced with the last
                    # one (DDP no_sync); a non-finite loss still runs backward so that every process takes
                    # part in the same collectives, then the step is skipped everywhere
                    loss = torch.zeros((), device=device)
                    micro_crops = [
                        [c.to(device, non_blocking=True, memory_format=memory_format) for c in micro.crops]
                        for micro in micro_batches
                    ]
                    codes: list[Any] = [None] * accumulate
                    if accumulate > 1 and hasattr(method, "codes_for_micro_batches"):
                        # targets of the whole accumulated batch, so the update is the k-times larger batch's
                        with torch.no_grad(), torch.autocast(
                            device.type, dtype=amp_dtype, enabled=amp_dtype is not None
                        ):
                            codes = model(micro_crops, epoch=epoch)
                    for i, crops in enumerate(micro_crops):
                        sync = nullcontext() if i == accumulate - 1 else no_gradient_sync(model)
                        with sync:
                            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                                kwargs = {} if codes[i] is None else {"codes": codes[i]}
                                micro_loss = model(crops, epoch=epoch, **kwargs) / accumulate
                            scaler.scale(micro_loss).backward()
                        loss = loss + micro_loss.detach().float()
                    micro_batches = []
                    loss = dist.all_reduce_sum(loss) / dist.world_size()  # the global mean, on every rank
                    finite = bool(torch.isfinite(loss))
                    if finite:
                        scaler.unscale_(optimizer)
                        norm = grad_norm(method.parameters())
                        finite = bool(torch.isfinite(norm)) or scaler.is_enabled()
                        if finite and cfg.optim.clip_grad > 0:
                            clip_grads(method.parameters(), cfg.optim.clip_grad, norm)
                    if finite:
                        scaler.step(optimizer)
                        scaler.update()
                        consecutive_bad = 0
                    else:
                        nonfinite_total += 1
                        consecutive_bad += 1
                        log.warning(
                            "step %d: non-finite loss or gradient (loss=%s); step skipped",
                            step,
                            float(loss.detach()),
                        )
                        if consecutive_bad >= cfg.train.max_nonfinite_steps:
                            raise TrainingError(
                                f"{consecutive_bad} consecutive non-finite steps (last loss "
                                f"{float(loss.detach())}); try train.precision=fp32, model.channels_last=false "
                                f"or a lower optim.base_lr"
                            )
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    loss_value = float(loss.detach())
                    losses.append(loss_value)
                    if finite:
                        window_loss, window_n = window_loss + loss_value, window_n + 1
                    window_images += derived.global_batch
                    last = step == derived.total_steps
                    if is_main and (step % cfg.train.log_every == 0 or last):
                        now = time.time()
                        rate = window_images / max(now - window_start, 1e-9)
                        mean_loss = window_loss / window_n if window_n else None  # None: all non-finite
                        row = {
                            "step": step,
                            "epoch": epoch,
                            "loss": mean_loss,
                            "lr": lr,
                            "wd": cfg.optim.weight_decay,
                            "images_per_s": rate,
                            "seconds": now - started,
                            "nonfinite_steps": nonfinite_total,
                        }
                        if monitor is not None:  # online kNN; its time is kept out of the next window
                            row.update(monitor(step, last, method.backbone))
                            now = time.time()
                        try:
                            metrics_file.write((json.dumps(row) + "\n").encode())
                        except OSError as e:  # one line naming the file and errno; checkpoints are intact
                            raise CheckpointWriteError(out / "metrics.jsonl", e) from None
                        bar.set_postfix(
                            loss=f"{mean_loss or float('nan'):.3f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}"
                        )
                        window_loss, window_n, window_images, window_start = 0.0, 0, 0, now
                    bar.update(1)
                    if on_step is not None:
                        on_step(step, loss_value)
                    end_of_epoch = step % derived.steps_per_epoch == 0
                    if last or end_of_epoch or stop.requested or step % cfg.train.checkpoint_every == 0:
                        checkpoint(step_file=step % cfg.train.checkpoint_every == 0)
                    if last or end_of_epoch or stop.requested:
                        break
    except ForcedStop:
        status = "interrupted"  # a second signal mid-step: the state may be half-updated, keep last.pt
    except KeyboardInterrupt:  # raised between steps (e.g. by on_step): the state is consistent
        checkpoint(step_file=False)
        status = "interrupted"
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    if status == "completed" and step < derived.total_steps:
        status = "interrupted"

    # what every process skipped and converted (collectives)
    skipped = dist.merge_dicts(skipped)
    summary = run_summary(cfg, derived, method, step, losses, skipped, nonfinite_total, status, started)
    summary["converted_by_kind"] = dist.sum_counts(converted)  # collective
    # a consolidated backbone (gathered from the shards with FSDP: every process takes part)
    backbone_state = full_backbone_state(method) if status == "completed" else None
    if is_main:
        if backbone_state is not None:
            export_backbone_state(out, backbone_state, backbone_spec(cfg.model))
        atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    return summary
