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
``towers``                             (class attribute) the declared :class:`Tower` s: every backbone and head
                                       submodule with its role, EMA copies naming the tower they trail.
                                       ``--init``, FSDP wrapping, ``openseer info`` and export read this, never
                                       attribute names; :meth:`Method.check_towers` validates it after build.
``ema_pairs()``                        (target, online) module pairs of the EMA copies, from ``towers``;
                                       ``ops.ema.ema_update_pairs`` moves every target towards its online tower.
``exported_backbone``                  path of the backbone tower to export and evaluate ("backbone", or
                                       "teacher.backbone" for DINO); backbone.json records it.
``fp32_modules``                      submodule names kept in float32: own FSDP2 unit, fp32 parameters.
``cluster_weights()``                  (K, d) prototypes / last layer for the report's cluster picture, or None.
``trivial_loss()``                     the loss of a collapsed or untrained model (e.g. ln K), or None.
``collapse_signals()``                 :class:`CollapseSignal` s: a logged scalar, its collapse line and the
                                       remedy (docs/methods.md); the loop warns when one stays past its line.
``output_tower``                      path of the declared tower that maps the exported backbone's features
                                       to the method's output embedding, what its loss compares ("projector";
                                       SwAV / DeepCluster-v2 "head"; DINO "teacher.head"), or None.
``head_embed(images, features)``       (health checks, rank 0, no grad, eval mode) that output embedding of
                                       ``images``: ``output_tower`` on ``features`` (the exported backbone's,
                                       when the caller has them: the backbone runs once per check), or None
                                       without an ``output_tower``. Override for another output.
``probe_signals(z)``                   further ``{"health_<name>": float}`` of the probe set from its stacked
                                       ``head_embed`` rows ``z`` (float32); default {} (SwAV, DeepCluster-v2:
                                       code entropy and occupancy of the prototype scores).
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

from openseer.config import RunInfo  # part of the method contract; defined beside derive()
from openseer.errors import ConfigError


@dataclass(frozen=True)
class Tower:
    """One declared submodule of a method: where it is, what it is, and whether it is an EMA copy.

    ``role="backbone"``: a timm backbone (``--init`` loads imported backbone weights into it, FSDP shards it
    block by block, ``openseer info`` counts its blocks and FLOPs). ``role="head"``: a projector, predictor,
    prototypes or last layer (one FSDP unit; ``--init`` loads a source's head tensors of the same name).
    ``ema_of`` names the online tower this one trails by an exponential moving average and takes no
    gradient (BYOL's target network, Grill et al. 2020 eq. 1; MoCo v3's momentum encoder; DINO's teacher).
    """

    path: str  # attribute path inside the method ("backbone", "teacher.head")
    role: Literal["backbone", "head"] = "backbone"
    ema_of: str | None = None  # path of the online tower it trails by EMA; None: trained by gradients


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


def optimizer_groups(groups: Iterable[ParamGroup], weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer group dicts from a method's tagged groups; ``weight_decay`` x each group's ``wd_scale``.

    The loop sets ``lr`` and ``weight_decay`` again at every step from the schedules and the same tags (formerly
    ``openseer.ops.param_groups``: the grouping belongs to the method contract, not to the numerics below it).
    """
    out = []
    for group in groups:
        d = group.as_optimizer_group()
        d["weight_decay"] = weight_decay * group.wd_scale
        out.append(d)
    return out


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
    # every backbone and head submodule with its role; EMA copies name their online tower (see Tower)
    towers: ClassVar[tuple[Tower, ...]] = (Tower("backbone"),)
    exported_backbone: ClassVar[str] = "backbone"  # the path of a backbone tower
    # the declared tower that maps exported_backbone's features to the output embedding (health checks), or None
    output_tower: ClassVar[str | None] = None
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

    # -- the declared towers --------------------------------------------------------------------------------
    def tower_modules(self, role: str | None = None, ema: bool | None = None) -> list[tuple[Tower, nn.Module]]:
        """The declared towers with their submodules, in declaration order; filtered by ``role`` and by
        ``ema`` (True: EMA copies only, False: trained towers only)."""
        return [
            (t, self.get_submodule(t.path))
            for t in self.towers
            if (role is None or t.role == role) and (ema is None or (t.ema_of is not None) == ema)
        ]

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(target, online) for every EMA tower, in declaration order."""
        return [(m, self.get_submodule(t.ema_of)) for t, m in self.tower_modules(ema=True) if t.ema_of]

    def check_towers(self) -> None:
        """One-line :class:`ConfigError` unless the declaration fits the built method: every path is a
        submodule, ``exported_backbone`` is a backbone tower, and every EMA tower names a declared online
        tower of its role with the same parameter names and shapes and takes no gradient."""
        where = f"method {self.name or type(self).__name__!r}"
        declared = {t.path: t for t in self.towers}
        for t in self.towers:
            try:
                module = self.get_submodule(t.path)
            except AttributeError:
                raise ConfigError(f"{where} declares tower {t.path!r} but has no such submodule") from None
            if t.ema_of is not None:
                online = declared.get(t.ema_of)
                if online is None or online.role != t.role or online.ema_of is not None:
                    valid = [p for p, o in declared.items() if o.role == t.role and o.ema_of is None]
                    raise ConfigError(f"{where}: EMA tower {t.path!r} trails {t.ema_of!r}; valid: {valid}")
                _check_ema_pair(where, t.path, module, t.ema_of, self.get_submodule(t.ema_of))
        backbones = [t.path for t in self.towers if t.role == "backbone"]
        if self.exported_backbone not in backbones:
            raise ConfigError(f"{where}: exported_backbone={self.exported_backbone!r}; valid: {backbones}")

    def cluster_weights(self) -> torch.Tensor | None:
        return None

    def trivial_loss(self) -> float | None:
        return None

    def collapse_signals(self) -> tuple[CollapseSignal, ...]:
        """Collapse lines watched during the run; the default: backbone RankMe on the probe set ~1. Methods add
        their own signature to it. (The loss is no signal: a healthy SwAV starts above its trivial ln K.)"""
        return (RANK_COLLAPSE,)

    # -- label-free health signals on the probe set (openseer.train.health) ---------------------------------
    def head_embed(self, images: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor | None:
        """The (N, d) output embedding of ``images`` (what the loss compares): ``output_tower`` on the exported
        backbone's features, or None without an ``output_tower`` (the signals are then the backbone's only).

        The health monitor calls it under ``torch.no_grad`` with the method in eval mode, giving ``features``, the
        exported backbone's features of ``images``, so that the backbone runs once per check.
        """
        if self.output_tower is None:
            return None
        if features is None:
            features = self.export_module()(images)
        return self.get_submodule(self.output_tower)(features)

    def probe_signals(self, embeddings: torch.Tensor) -> dict[str, float]:
        """Further ``{"health_<name>": value}`` entries of a health check, from the probe set's stacked
        :meth:`head_embed` rows (float32, on the CPU); a method with prototypes scores them (SwAV's code
        entropy and occupancy). Default: none. Its collapse lines go into :meth:`collapse_signals`."""
        return {}


def _check_ema_pair(where: str, target_path: str, target: nn.Module, online_path: str, online: nn.Module) -> None:
    """Same parameter names and shapes on both sides, and no gradient into the target (one-line error)."""
    t_shapes = {n: tuple(p.shape) for n, p in target.named_parameters()}
    o_shapes = {n: tuple(p.shape) for n, p in online.named_parameters()}
    for name in sorted(t_shapes.keys() | o_shapes.keys()):
        a, b = t_shapes.get(name), o_shapes.get(name)
        if a != b:
            raise ConfigError(
                f"{where}: EMA pair {target_path!r} <- {online_path!r} differs at parameter {name!r}: "
                f"{list(a) if a else 'missing'} vs {list(b) if b else 'missing'}; an EMA tower must be a copy"
            )
    trained = next((n for n, p in target.named_parameters() if p.requires_grad), None)
    if trained is not None:
        raise ConfigError(f"{where}: EMA tower {target_path!r} trains {trained!r}; EMA copies take no gradient")
