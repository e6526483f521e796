"""One optimizer step, callable on its own (dino ``train_one_epoch``'s body, nanoGPT's inner loop).

lr/wd from the per-step schedules and each group's tags -> ``method.before_step`` -> (exact accumulation only)
the method's no-grad targets of the whole accumulated batch -> per micro-batch: autocast forward and backward
(DDP ``no_sync`` except for the last) -> loss all-reduced over processes -> non-finite check -> unscale, clip,
optimizer step, ``method.after_step``; or, for a non-finite step, ``method.skipped_step`` and no update.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from openseer import dist
from openseer.errors import TrainingError  # noqa: F401 (re-exported)
from openseer.methods.base import Method, ParamGroup, RunInfo, StepContext
from openseer.parallel import PRECISION_DTYPES, clip_grads, clip_grads_per_param, grad_norm, no_gradient_sync


@dataclass
class Trainer:
    """What a step needs: the method, its wrapped model, the optimizer with its tagged groups, schedules."""

    method: Method  # the unwrapped method (hooks, parameters)
    model: nn.Module  # the same method wrapped for DDP/FSDP2: every forward goes through it
    optimizer: torch.optim.Optimizer
    groups: list[ParamGroup]  # the tags of optimizer.param_groups, in the same order
    lr_schedule: torch.Tensor  # per step
    wd_schedule: torch.Tensor  # per step
    info: RunInfo
    peak_lr: float  # what groups with ``fixed_lr`` get at every step
    device: torch.device
    precision: str = "fp32"  # fp32, bf16 or fp16 (with a gradient scaler)
    clip_grad: float = 0.0
    clip_mode: str = "global"  # "global": the norm of all gradients; "per_param": each one's (DINO)
    memory_format: torch.memory_format = torch.contiguous_format
    seed: int = 0  # with the step and rank, seeds the model's own randomness (stochastic depth, dropout)
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return PRECISION_DTYPES.get(self.precision)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


@dataclass
class StepResult:
    loss: float  # the global mean over processes (nan/inf when non-finite)
    finite: bool  # False: the step was skipped everywhere
    lr: float
    wd: float
    scalars: dict[str, float]  # the method's named scalars, mean over micro-batches (this process)


def group_lr(group: ParamGroup, lr: float, step: int, peak_lr: float | None = None) -> float:
    """A group's lr at ``step``: 0 while frozen, else the scheduled lr ``lr`` (``peak_lr`` for a group with
    ``fixed_lr``) x its ``lr_scale``."""
    if step < group.freeze_steps:
        return 0.0
    return (peak_lr if group.fixed_lr and peak_lr is not None else lr) * group.lr_scale


def apply_schedules(trainer: Trainer, step: int) -> tuple[float, float]:
    """Set every optimizer group's lr and weight decay for ``step`` from the schedules and its tags."""
    lr, wd = float(trainer.lr_schedule[step]), float(trainer.wd_schedule[step])
    for opt_group, tags in zip(trainer.optimizer.param_groups, trainer.groups, strict=True):
        opt_group["lr"] = group_lr(tags, lr, step, trainer.peak_lr)
        # frozen (SwAV's prototypes, DINO's last layer): gradients dropped, no momentum or Adam state built. A
        # scheduled lr of 0 (a warm-up's first step) is not frozen: the optimizer state builds, as the references'
        opt_group["frozen"] = step < tags.freeze_steps
        opt_group["weight_decay"] = wd * tags.wd_scale
    return lr, wd


def _forward_backward(
    trainer: Trainer, micro_crops: list[list[torch.Tensor]], ctx: StepContext, indices: list[Any] | None = None
):
    """Sum over micro-batches of loss/k (detached) and of the scalars/k; backward of each."""
    k = len(micro_crops)
    targets: list[Any] = [None] * k
    if k > 1 and trainer.method.exact_accumulation and trainer.method.needs_accumulation_targets():
        # targets of the whole accumulated batch, so the update is the k-times larger batch's
        with torch.no_grad(), trainer.autocast():
            targets = trainer.model(micro_crops, ctx, mode="targets")
    loss = torch.zeros((), device=trainer.device)
    scalars: dict[str, float] = {}
    for i, crops in enumerate(micro_crops):
        # gradients are all-reduced with the last micro-batch; a non-finite loss still runs backward so that
        # every process takes part in the same collectives, then the step is skipped everywhere
        with nullcontext() if i == k - 1 else no_gradient_sync(trainer.model):
            with trainer.autocast():
                kwargs = {"indices": indices[i]} if indices is not None and trainer.method.needs_indices else {}
                out = trainer.model(crops, ctx, targets[i], **kwargs)
                micro_loss = out.loss / k
            trainer.scaler.scale(micro_loss).backward()
        loss = loss + micro_loss.detach().float()
        for name, value in out.scalars.items():
            scalars[name] = scalars.get(name, 0.0) + float(value) / k
    return loss, scalars


def _update(trainer: Trainer) -> bool:
    """Unscale, check and clip the gradients, step the optimizer; False when the gradient is non-finite."""
    scaler, optimizer = trainer.scaler, trainer.optimizer
    scaler.unscale_(optimizer)
    norm = grad_norm(trainer.method.parameters())
    if not (bool(torch.isfinite(norm)) or scaler.is_enabled()):
        return False
    if trainer.clip_grad > 0 and trainer.clip_mode == "per_param":
        clip_grads_per_param(trainer.method.parameters(), trainer.clip_grad)
    elif trainer.clip_grad > 0:
        clip_grads(trainer.method.parameters(), trainer.clip_grad, norm)
    for group in optimizer.param_groups:
        if group.get("frozen", False):  # no update and no momentum/Adam state built on its gradient
            for p in group["params"]:
                p.grad = None
    scaler.step(optimizer)
    scaler.update()
    return True


def step_seed(seed: int, step: int, rank: int) -> int:
    """The generator seed for one step's forward: a function of (seed, step, rank) only, so a resumed run draws
    the stochastic-depth and dropout masks of an uninterrupted one, whatever else (e.g. a data loader
    creating its iterator) drew from the global generator in between."""
    return ((seed * 1_000_003 + step) * 1_009 + rank) % (2**63)


def train_step(
    trainer: Trainer,
    micro_crops: list[list[torch.Tensor]],
    step: int,
    epoch: int,
    micro_indices: list[torch.Tensor] | None = None,
) -> StepResult:
    """One optimizer step on ``micro_crops`` (accumulate_steps micro-batches of crop lists) of this process;
    ``micro_indices`` (the images' dataset indices) go to methods with ``needs_indices``."""
    ctx = StepContext(step=step, epoch=epoch, info=trainer.info)
    lr, wd = apply_schedules(trainer, step)
    micro_crops = [
        [c.to(trainer.device, non_blocking=True, memory_format=trainer.memory_format) for c in crops]
        for crops in micro_crops
    ]
    trainer.method.before_step(ctx)
    torch.manual_seed(step_seed(trainer.seed, step, dist.rank()))
    loss, scalars = _forward_backward(trainer, micro_crops, ctx, micro_indices)
    loss = dist.all_reduce_sum(loss) / dist.world_size()  # the global mean, on every rank
    finite = bool(torch.isfinite(loss)) and _update(trainer)
    if finite:
        trainer.method.after_step(ctx)
    else:
        trainer.method.skipped_step(ctx)
    trainer.optimizer.zero_grad(set_to_none=True)
    return StepResult(float(loss), finite, lr, wd, scalars)
