"""The method contract: what the training loop gives a self-supervised method and what it gets back.

The loop (``openseer/train``) knows no method by name. It talks to every method through this class only:

=====================================  =============================================================================
loop calls                             the method
=====================================  =============================================================================
``build(cfg, backbone, info)``         (module function, registered in :mod:`openseer.methods.registry`) builds
                                       the method around a timm backbone; ``info`` holds the derived run sizes.
``param_groups(named, optim)``         splits its parameters into :class:`ParamGroup` s, each tagged with an lr
                                       and weight-decay multiplier, LARS exclusion and a freeze length. The
                                       optimizer and the loop apply the tags without knowing why they are there.
``before_step(ctx)``                   before the forward of each optimizer step (e.g. SwAV normalises its
                                       prototypes; a queue snapshot is taken so a skipped step can undo it).
``forward(crops, ctx, targets)``       one (micro-)batch of crops -> :class:`StepOutput` (loss + named scalars).
``forward(micro, ctx, mode="targets")`` only when ``exact_accumulation`` and ``train.accumulate_steps > 1``:
                                       no-grad targets of the whole accumulated batch, one entry per micro-batch
                                       (SwAV's codes); each is passed back as ``targets`` to the gradient pass.
                                       Goes through ``forward`` so DDP/FSDP prepare parameters as for any call.
``forward(..., indices=idx)``          only for a method with ``needs_indices``: each micro-batch's dataset
                                       indices (DeepCluster-v2's memory bank).
``after_step(ctx)``                    after the optimizer step (e.g. a teacher's EMA update).
``skipped_step(ctx)``                  instead of ``after_step`` when the step was non-finite and skipped:
                                       undo what the forward changed (e.g. rows pushed into SwAV's queue).
``global_extra_state(ctx)``            collective on every process: state outside ``state_dict()`` (a queue)
                                       as ``{name: process-independent object}``; each entry is stored under
                                       its name at the top level of the checkpoint (SwAV: ``"queue"``).
``load_global_extra_state(s, ctx)``    this process's share of those entries (same dict), for any number of
                                       processes; called only when the checkpoint holds any of them.
``exported_backbone``                  attribute path of the backbone to export and evaluate ("backbone", or
                                       "teacher.backbone" for DINO); backbone.json records it.
``fp32_modules``                      submodule names kept in float32: own FSDP2 unit, fp32 parameters.
``cluster_weights()``                  (K, d) prototypes / last layer for the report's cluster picture, or None.
``trivial_loss()``                     the loss of a collapsed or untrained model (e.g. ln K), or None.
``collapse_signals()``                 :class:`CollapseSignal` s: a logged scalar, its collapse line and the
                                       remedy (docs/methods.md); the loop warns when one stays past its line.
=====================================  =============================================================================

State that lives in submodules, parameters and buffers (a teacher network, DINO's centre) travels in
``state_dict()`` and is sharded by FSDP like everything else; only process-local state (a queue) needs the
``*_extra_state`` pair. Collectives go through :mod:`openseer.dist` (no-ops with one process).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class RunInfo:
    """Sizes the loop derives before building a method (see ``openseer.config.derive``)."""

    global_batch: int  # images per optimizer step over all processes and accumulation steps
    local_batch: int  # images per micro-batch on one process (train.batch_size)
    world_size: int
    accumulate_steps: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, cfg: Any, derived: Any) -> RunInfo:
        """From a config and its :class:`openseer.config.Derived` (``derive(cfg, images, world_size)``)."""
        return cls(
            global_batch=derived.global_batch,
            local_batch=cfg.train.batch_size,
            world_size=derived.world_size,
            accumulate_steps=cfg.train.accumulate_steps,
            steps_per_epoch=derived.steps_per_epoch,
            total_steps=derived.total_steps,
        )


@dataclass(frozen=True)
class StepContext:
    """What the loop tells a method about the current optimizer step."""

    step: int  # optimizer steps taken before this one (0-based)
    epoch: int
    info: RunInfo


@dataclass
class StepOutput:
    """A method's answer for one (micro-)batch: the loss to minimise and named scalars to log.

    ``scalars`` (floats or 0-d tensors) go into metrics.jsonl and onto the progress bar, averaged over
    the micro-batches of a step on each process (e.g. ``{"teacher_entropy": ...}``).
    """

    loss: torch.Tensor
    scalars: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParamGroup:
    """Parameters the optimizer treats alike, tagged with what the loop and optimizer must apply.

    lr at a step = scheduled lr x ``lr_scale`` (0 while ``step < freeze_steps``: neither the parameter nor
    its momentum changes), or with ``fixed_lr`` the peak lr x ``lr_scale`` at every step (no warm-up, no decay:
    SimSiam's ``--fix-pred-lr``); weight decay = scheduled weight decay x ``wd_scale``; LARS leaves a group with
    ``lars_exclude`` unadapted (plain SGD momentum).
    """

    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0
    wd_scale: float = 1.0
    lars_exclude: bool = False
    freeze_steps: int = 0
    fixed_lr: bool = False

    def as_optimizer_group(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "name": self.name,
            "lr_scale": self.lr_scale,
            "wd_scale": self.wd_scale,
            "lars_exclude": self.lars_exclude,
            "freeze_steps": self.freeze_steps,
            "fixed_lr": self.fixed_lr,
        }


@dataclass(frozen=True)
class CollapseSignal:
    """A scalar of the metrics rows (a method scalar, ``loss`` or a ``health_*`` signal) and its collapse line.

    The run warns once (`openseer.train.health.CollapseWatch`) when ``name`` stays ``below``/``above`` ``line``
    for a sustained window of rows after the lr warm-up; ``remedy`` is the advice of docs/methods.md.
    """

    name: str
    line: float
    direction: Literal["below", "above"]
    remedy: str

    def crossed(self, value: float) -> bool:
        return value < self.line if self.direction == "below" else value > self.line


# Backbone features of rank ~1 on the probe set: every image maps to (nearly) the same direction.
RANK_COLLAPSE = CollapseSignal(
    "health_rankme",
    1.5,
    "below",
    "the backbone maps every probe image to one direction: lower optim.base_lr, check the augmentations "
    "(aug.*) and the method's anti-collapse settings (docs/methods.md)",
)


def z_std_collapse(dim: int, remedy: str) -> CollapseSignal:
    """``z_std`` (std of l2-normalised outputs, SimSiam sec. 4.1) under a tenth of its healthy 1/sqrt(dim)."""
    return CollapseSignal("z_std", 0.1 / dim**0.5, "below", remedy)


def is_bias_or_norm(param: nn.Parameter) -> bool:
    """Biases and norm-layer weights (1-d), which many recipes exclude from weight decay and LARS."""
    return param.ndim <= 1


def split_groups(
    named: Iterable[tuple[str, nn.Parameter]],
    exclude_bias_and_norm: bool,
    special: dict[str, dict[str, Any]] | None = None,
) -> list[ParamGroup]:
    """The usual grouping: by name prefix (``special``: prefix -> ParamGroup tags), then bias/norm or not.

    With ``exclude_bias_and_norm`` biases and norm weights go into ``<group>_no_wd`` with ``wd_scale=0`` and
    ``lars_exclude=True`` (SimCLR, BYOL, DINO); without it every parameter is decayed and adapted (SwAV,
    SEER). Frozen parameters (``requires_grad=False``) are left out.
    """
    groups: dict[str, ParamGroup] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        prefix = next((pre for pre in (special or {}) if name.startswith(pre)), None)
        tags = dict((special or {}).get(prefix, {})) if prefix is not None else {}
        base = tags.pop("name", None) or "default"
        excluded = exclude_bias_and_norm and is_bias_or_norm(p)
        key = base + ("_no_wd" if excluded else "")
        if key not in groups:
            if excluded:
                tags.update(wd_scale=0.0, lars_exclude=True)
            groups[key] = ParamGroup(key, [], **tags)
        groups[key].params.append(p)
    return list(groups.values())


class Method(nn.Module):
    """Base class of every method; see the module docstring for who calls what.

    A subclass sets ``name`` and ``exact_accumulation`` and implements :meth:`compute_loss`; every other
    hook has a default that does nothing.
    """

    name: ClassVar[str] = ""
    # True when k accumulated micro-batches give the update of one k-times larger batch (the method either
    # has no batch-coupled term, or computes such terms over the whole accumulated batch in mode="targets").
    exact_accumulation: ClassVar[bool] = False
    exported_backbone: ClassVar[str] = "backbone"
    # True: forward also takes ``indices=`` (the micro-batch's dataset indices, e.g. for a memory bank)
    needs_indices: ClassVar[bool] = False
    # submodules that compute in float32 (autocast off inside the method): with FSDP2 each becomes its own
    # unit whose parameters are gathered in float32 (SwAV's prototypes, as VISSL does "for convergence")
    fp32_modules: ClassVar[tuple[str, ...]] = ()

    def forward(
        self,
        crops: list[Any],
        ctx: StepContext,
        targets: Any = None,
        mode: Literal["loss", "targets"] = "loss",
    ) -> Any:
        if mode == "targets":
            return self.accumulation_targets(crops, ctx)
        return self.compute_loss(crops, ctx, targets)

    def compute_loss(self, crops: list[torch.Tensor], ctx: StepContext, targets: Any = None) -> StepOutput:
        raise NotImplementedError

    def accumulation_targets(self, micro_crops: list[list[torch.Tensor]], ctx: StepContext) -> list[Any]:
        """Targets of the whole accumulated batch, one per micro-batch (no grad); only if exact_accumulation
        needs a joint pass. The default needs none."""
        return [None] * len(micro_crops)

    def needs_accumulation_targets(self) -> bool:
        return type(self).accumulation_targets is not Method.accumulation_targets

    def param_groups(self, named: Iterable[tuple[str, nn.Parameter]], optim: Any) -> list[ParamGroup]:
        """Default: one group, bias/norm excluded from weight decay and LARS as ``optim.exclude_bias_and_norm``."""
        return split_groups(named, getattr(optim, "exclude_bias_and_norm", True))

    def before_step(self, ctx: StepContext) -> None:
        pass

    def after_step(self, ctx: StepContext) -> None:
        pass

    def skipped_step(self, ctx: StepContext) -> None:
        pass

    def global_extra_state(self, ctx: StepContext) -> dict[str, Any] | None:
        return None

    def load_global_extra_state(self, state: dict[str, Any], ctx: StepContext) -> None:
        pass

    def export_module(self) -> nn.Module:
        return self.get_submodule(self.exported_backbone)

    def cluster_weights(self) -> torch.Tensor | None:
        return None

    def trivial_loss(self) -> float | None:
        return None

    def collapse_signals(self) -> tuple[CollapseSignal, ...]:
        """Collapse lines watched during the run; the default: backbone RankMe on the probe set ~1. Methods add
        their own signature to it. (The loss is no signal: a healthy SwAV starts above its trivial ln K.)"""
        return (RANK_COLLAPSE,)
