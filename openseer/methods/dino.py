"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers"). Reference implementation: facebookresearch/dino ``main_dino.py`` (loss, centre, schedules,
training step), ``vision_transformer.py`` (DINO head) and ``utils.py`` (cosine scheduler, parameter groups,
last-layer freezing).

A student network (backbone + DINO head) is trained to match, with a softmax at temperature 0.1, the output
distribution of a teacher network of the same architecture whose weights are an exponential moving average
of the student's (momentum 0.996 -> 1 on a cosine). Only the global crops go through the teacher; every crop
goes through the student; a student crop is never asked to predict the teacher's output on the same crop.
Collapse is avoided by *centring* the teacher's logits (subtracting a running mean of them, momentum 0.9,
averaged over all processes) and *sharpening* them (a low teacher temperature, warmed up 0.04 -> 0.07).

Gradient accumulation is exact (``exact_accumulation = True``): the teacher's outputs and the loss are per
sample (the loss is a mean over the batch), the teacher does not change within a step, and the centre - the
one term coupled across the batch - is updated once per optimizer step, in :meth:`DINO.after_step`, from the
sums of every micro-batch of every process; every micro-batch is centred with the centre from before the
step, as one large batch is. Only batch-norm statistics (convnet backbones, ``use_bn_in_head``) stay per
micro-batch, as for SwAV. A skipped (non-finite) step drops its centre update instead of poisoning the centre.

Read top to bottom: config, validation, the loss (a pure function), the module, the builder.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from openseer import dist
from openseer.errors import ConfigError
from openseer.methods.base import (
    CollapseSignal,
    Method,
    ParamGroup,
    RunInfo,
    StepContext,
    StepOutput,
    Tower,
    split_groups,
)
from openseer.methods.registry import MethodEntry, register_method
from openseer.models.backbone import check_crop_sizes, feature_dim
from openseer.models.heads import DINOProjection, WeightNormLinear, multicrop_forward
from openseer.ops.ema import ema_update_pairs
from openseer.ops.schedules import cosine_schedule


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    out_dim: int = _f(
        65536,
        "Output dimension K of the DINO head (the number of 'prototypes'). Large values (65536) work well on "
        "large datasets; a few thousand suffice for CIFAR-sized ones.",
    )
    hidden_dim: int = _f(2048, "Hidden width of the head's MLP.")
    bottleneck_dim: int = _f(256, "Width of the L2-normalised bottleneck before the last layer.")
    head_layers: int = _f(3, "Linear layers of the head's MLP before the last layer (DINO: 3).")
    use_bn_in_head: bool = _f(False, "Batch norm in the head's MLP (DINO: no; a convnet recipe may use it).")
    norm_last_layer: bool = _f(
        True,
        "Keep the norm of every last-layer row fixed to 1 (weight normalisation without learned g). False "
        "learns the norms: often better with ViT-S, but can make training unstable.",
    )
    warmup_teacher_temp: float = _f(
        0.04, "Teacher temperature at the start of its warm-up; lower it if the loss does not decrease."
    )
    teacher_temp: float = _f(
        0.07, "Teacher temperature after the warm-up; above 0.07 is usually unstable (DINO's advice)."
    )
    warmup_teacher_temp_epochs: int = _f(
        30, "Epochs of linear teacher-temperature warm-up (DINO: 30; 0 = teacher_temp from the start)."
    )
    student_temp: float = _f(0.1, "Student temperature.")
    center_momentum: float = _f(0.9, "Momentum of the running centre of the teacher's outputs.")
    momentum_teacher: float = _f(
        0.996,
        "Start of the teacher EMA momentum, raised to 1 on a cosine over the run. With small batches use a "
        "higher value (DINO: 0.9995 at batch 256).",
    )
    freeze_last_layer_epochs: int = _f(
        1, "Epochs during which the head's last layer stays fixed (DINO: 1); raise it if the loss stalls."
    )


def validate(cfg: Any) -> None:
    d = cfg.dino
    for key in ("out_dim", "hidden_dim", "bottleneck_dim", "head_layers"):
        if getattr(d, key) <= 0:
            raise ConfigError(f"dino.{key}={getattr(d, key)} must be positive")
    for key in ("warmup_teacher_temp", "teacher_temp", "student_temp"):
        if getattr(d, key) <= 0:
            raise ConfigError(f"dino.{key}={getattr(d, key)} must be positive")
    if not 0.0 <= d.momentum_teacher <= 1.0 or not 0.0 <= d.center_momentum < 1.0:
        raise ConfigError("dino.momentum_teacher must be in [0, 1] and dino.center_momentum in [0, 1)")
    if d.warmup_teacher_temp_epochs < 0 or d.freeze_last_layer_epochs < 0:
        raise ConfigError("dino.warmup_teacher_temp_epochs and dino.freeze_last_layer_epochs must be >= 0")
    if cfg.aug.global_crops + cfg.aug.local_crops < 2:
        raise ConfigError("DINO needs at least 2 crops per image (aug.global_crops + aug.local_crops)")
    sizes = {"aug.global_size": cfg.aug.global_size}
    if cfg.aug.local_crops:
        sizes["aug.local_size"] = cfg.aug.local_size
    check_crop_sizes(cfg.model, sizes)


# ---- the loss ---------------------------------------------------------------------------------------------
def dino_loss(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
    n_global: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO's cross-entropy between the centred, sharpened teacher and the student (paper eq. 1 and 4).

    Args:
        student_out: (n_crops * B, K) student logits, crop-major (rows [c*B:(c+1)*B] are crop c).
        teacher_out: (n_global * B, K) teacher logits of the global crops (the first ``n_global`` crops).
        center: (1, K) running mean of the teacher's logits.

    Returns:
        The loss, averaged over the batch and over every (teacher crop, other student crop) pair, and the
        mean entropy of the teacher's distributions (ln K when they are uniform, 0 when one-hot).
    """
    batch = teacher_out.shape[0] // n_global
    log_p = F.log_softmax(student_out.float() / student_temp, dim=-1).split(batch)
    log_q = F.log_softmax((teacher_out.float() - center) / teacher_temp, dim=-1).detach()
    q = log_q.exp()
    total, terms = student_out.new_zeros((), dtype=torch.float32), 0
    for iq, q_crop in enumerate(q.split(batch)):
        for v, log_p_crop in enumerate(log_p):
            if v == iq:  # the student never predicts the teacher's output on the same view
                continue
            total = total + torch.sum(-q_crop * log_p_crop, dim=-1).mean()
            terms += 1
    entropy = torch.sum(-q * log_q, dim=-1).mean()
    return total / terms, entropy


def teacher_temperature(epoch: int, cfg: Config) -> float:
    """Linear warm-up over the first epochs (``np.linspace(warmup, temp, epochs)[epoch]``), then constant."""
    if epoch < cfg.warmup_teacher_temp_epochs:
        ramp = torch.linspace(
            cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs, dtype=torch.float64
        )
        return float(ramp[epoch])
    return cfg.teacher_temp


# ---- the module -------------------------------------------------------------------------------------------
class Teacher(nn.Module):
    """The EMA copy of the student: backbone + projection + last layer, never trained by gradients."""

    def __init__(self, backbone: nn.Module, head: nn.Module, last_layer: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.last_layer = last_layer

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        return self.last_layer(multicrop_forward(self.backbone, self.head, crops))


def _without_stochastic_depth(module: nn.Module) -> nn.Module:
    """The reference builds its teacher without drop-path (the student has 0.1): switch it off in the copy."""
    for m in module.modules():
        if hasattr(m, "drop_prob"):  # timm DropPath
            m.drop_prob = 0.0
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return module


class DINO(Method):
    """Student (``backbone``, ``head`` = DINO's MLP to the unit bottleneck, ``last_layer``), its EMA ``teacher``
    of the same structure, and the ``center`` of the teacher's outputs."""

    name = "dino"
    towers = (
        Tower("backbone"),
        Tower("head", "head"),
        Tower("last_layer", "head"),  # DINO's 65536 x 256 last layer is larger than a ViT-S block
        Tower("teacher.backbone", ema_of="backbone"),
        Tower("teacher.head", "head", ema_of="head"),
        Tower("teacher.last_layer", "head", ema_of="last_layer"),
    )
    # health checks: the exported teacher's unit bottleneck (its K-wide logits are too wide for a spectrum)
    output_tower = "teacher.head"
    exact_accumulation = True
    exported_backbone = "teacher.backbone"  # DINO evaluates the teacher

    def __init__(self, backbone: nn.Module, cfg: Config, n_global: int, info: RunInfo):
        super().__init__()
        self.cfg = cfg
        self.n_global = n_global
        self.backbone = backbone
        self.head = DINOProjection(
            feature_dim(backbone), cfg.hidden_dim, cfg.bottleneck_dim, cfg.head_layers, cfg.use_bn_in_head
        )
        self.last_layer = WeightNormLinear(cfg.bottleneck_dim, cfg.out_dim, learn_norm=not cfg.norm_last_layer)
        # teacher and student start with the same weights; there is no backpropagation through the teacher
        copies = (copy.deepcopy(m) for m in (backbone, self.head, self.last_layer))
        self.teacher = _without_stochastic_depth(Teacher(*copies))
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        # per-step arrays (dino cosine_scheduler): the EMA momentum rises from momentum_teacher to 1
        with torch.device("cpu"):  # also when the method is built on the meta device (openseer info)
            self.momentum_schedule = cosine_schedule(cfg.momentum_teacher, 1.0, max(info.total_steps, 1))
        self.freeze_steps = cfg.freeze_last_layer_epochs * info.steps_per_epoch
        self._center_sum: torch.Tensor | None = None  # this step's teacher-output sum, applied in after_step
        self._center_count = 0

    # -- forward ------------------------------------------------------------------------------------------
    def compute_loss(self, crops: list[torch.Tensor], ctx: StepContext, targets: Any = None) -> StepOutput:
        with torch.no_grad():
            teacher_out = self.teacher(crops[: self.n_global]).float()  # only the global views
        student_out = self.last_layer(multicrop_forward(self.backbone, self.head, crops))
        temp = teacher_temperature(ctx.epoch, self.cfg)
        loss, entropy = dino_loss(student_out, teacher_out, self.center, temp, self.cfg.student_temp, self.n_global)
        self._add_to_center(teacher_out)
        scalars = {
            "teacher_entropy": entropy,
            # cross-entropy = H(teacher) + KL(teacher || student): KL near 0 with entropy near ln K or 0 is collapse
            "kl": loss.detach() - entropy,
            "teacher_temp": temp,
            "teacher_momentum": self.teacher_momentum(ctx.step),
        }
        return StepOutput(loss, scalars)

    def teacher_momentum(self, step: int) -> float:
        return float(self.momentum_schedule[min(step, len(self.momentum_schedule) - 1)])

    # -- centre -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _add_to_center(self, teacher_out: torch.Tensor) -> None:
        batch_sum = teacher_out.detach().float().sum(dim=0, keepdim=True)
        self._center_sum = batch_sum if self._center_sum is None else self._center_sum + batch_sum
        self._center_count += teacher_out.shape[0]

    @torch.no_grad()
    def update_center(self) -> None:
        """centre <- m centre + (1 - m) mean of this step's teacher outputs over all processes (collective)."""
        if self._center_sum is None:
            return
        packed = torch.cat([self._center_sum, self._center_sum.new_tensor([[self._center_count]])], dim=1)
        packed = dist.all_reduce_sum(packed)
        batch_center = packed[:, :-1] / packed[:, -1:]
        m = self.cfg.center_momentum
        self.center.copy_(self.center * m + batch_center * (1 - m))
        self._center_sum, self._center_count = None, 0

    # -- teacher ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m teacher + (1 - m) student, parameter by parameter (buffers stay the teacher's own):
        the declared EMA pairs ``teacher.backbone/head/last_layer`` <- ``backbone/head/last_layer``."""
        ema_update_pairs(self.ema_pairs(), momentum)

    # -- hooks called by the loop -------------------------------------------------------------------------
    def before_step(self, ctx: StepContext) -> None:
        self._center_sum, self._center_count = None, 0

    def after_step(self, ctx: StepContext) -> None:
        self.update_center()
        self.update_teacher(self.teacher_momentum(ctx.step))

    def skipped_step(self, ctx: StepContext) -> None:
        self._center_sum, self._center_count = None, 0  # a non-finite step must not move the centre

    def param_groups(self, named: Any, optim: Any) -> list[ParamGroup]:
        """No weight decay on biases and norms (DINO ``get_params_groups``); the last layer is its own group,
        frozen for the first ``freeze_last_layer_epochs`` epochs (DINO ``cancel_gradients_last_layer``)."""
        special = {"last_layer.": {"name": "last_layer", "freeze_steps": self.freeze_steps}}
        return split_groups(named, getattr(optim, "exclude_bias_and_norm", True), special)

    def cluster_weights(self) -> torch.Tensor | None:
        """The teacher's last-layer rows, each of norm 1 with ``norm_last_layer``: ``head`` embeddings are unit
        vectors, so their scores against these rows are DINO's logits (before the temperature)."""
        weight = self.teacher.last_layer.normalized_weight().detach()
        return weight.full_tensor() if hasattr(weight, "full_tensor") else weight

    def trivial_loss(self) -> float | None:
        return math.log(self.cfg.out_dim)  # uniform teacher and student

    def collapse_signals(self) -> tuple[CollapseSignal, ...]:
        """The defaults plus this method's collapse signature (docs/methods.md)."""
        return super().collapse_signals() + (
            CollapseSignal(
                "kl",
                1e-3,
                "below",
                "DINO needs centring and sharpening together (Caron et al. 2021, sec. 5.3): if teacher_entropy is "
                "near ln K lower dino.teacher_temp, if it is near 0 raise dino.center_momentum's effect (keep 0.9) "
                "and the teacher temperature warm-up",
            ),
        )


def build(cfg: Any, backbone: nn.Module, info: RunInfo) -> DINO:
    return DINO(backbone, cfg.dino, cfg.aug.global_crops, info)


ENTRY = register_method(
    MethodEntry(
        "dino",
        Config,
        build,
        validate,
        summary="DINO: self-distillation with an EMA teacher, centring and sharpening (Caron et al. 2021)",
    )
)
