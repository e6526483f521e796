"""BYOL: Bootstrap Your Own Latent (Grill et al. 2020).

An online network (backbone -> projector -> predictor) predicts, for each view, the projection of the other
view by a target network (backbone -> projector) whose parameters are an exponential moving average of the
online ones (tau 0.996 rising to 1 on a cosine, BYOL eq. 1 and sec. 3.2). The loss is the squared distance of
the l2-normalised prediction and target, 2 - 2 cos (eq. 2), symmetrised over the two views (eq. 4); no
negatives. Batch norm in the projector and predictor is what keeps it from collapsing in practice, so it must
see the global batch: set ``parallel.sync_batchnorm: true`` (the presets do), which makes every batch norm
all-reduce its statistics across processes.

Reference: deepmind/deepmind-research ``byol/byol_experiment.py`` (``_forward``: each view through the online and
target networks separately; ``regression_loss``; loss = mean over the batch of the two views' terms; target EMA
applied after the online update with the step's tau) and ``byol/utils/networks.py`` (``MLP``: Linear 4096 -> BN ->
ReLU -> Linear 256 ``with_bias=False``: the output layers of projector and predictor carry no bias; the hidden
layer's bias, which the batch norm after it cancels, is left out here). Optimizer: LARS, lr 0.2 x batch / 256, wd
1.5e-6, biases and BN excluded from wd and LARS, 10 warm-up epochs, batch 4096, 300-1000 epochs. Not reproduced:
the asymmetric augmentation (blur always on view 1 and 10% on view 2, solarisation 20% on view 2 only): both views
share ``aug``. Gradient accumulation is exact: the loss is a mean of per-image terms and the target moves once per
optimizer step; only batch-norm statistics stay per micro-batch (docs/distributed.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from openseer.errors import ConfigError
from openseer.methods.base import CollapseSignal, Method, RunInfo, StepContext, StepOutput, Tower, z_std_collapse
from openseer.methods.registry import MethodEntry, register_method
from openseer.methods.two_views import per_view, require_two_views
from openseer.models.backbone import feature_dim
from openseer.models.heads import MLP
from openseer.ops.collapse import embedding_std
from openseer.ops.ema import ema_update_pairs, frozen_copy, momentum_at


@dataclass
class Config:
    hidden_dim: int = field(default=4096, metadata={"help": "Hidden width of projector and predictor (4096)."})
    output_dim: int = field(default=256, metadata={"help": "Projection dimension (256)."})
    base_momentum: float = field(
        default=0.996,
        metadata={"help": "Target EMA rate tau at step 0, raised to 1 on a cosine (0.996; 0.99 for short runs)."},
    )
    output_bias: bool = field(
        default=False,
        metadata={
            "help": "A bias on the projector's and predictor's output layers. The reference has none (false); "
            "true rebuilds the heads of checkpoints written before openseer matched it, to resume or load them.",
            "resumable": True,
        },
    )


def validate(cfg: Any) -> None:
    s = cfg.byol
    if s.hidden_dim <= 0 or s.output_dim <= 0:
        raise ConfigError("byol.hidden_dim and byol.output_dim must be positive")
    if not 0.0 <= s.base_momentum <= 1.0:
        raise ConfigError(f"byol.base_momentum={s.base_momentum} must be in [0, 1]")
    require_two_views(cfg, "byol")


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-image ``|| p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)`` (BYOL eq. 2), float32; ``z`` gets no gradient."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        p = F.normalize(p.float(), dim=1)
        z = F.normalize(z.detach().float(), dim=1)
        return (p - z).pow(2).sum(dim=1)


class BYOL(Method):
    """Online backbone, projector and predictor; target backbone and projector (EMA, no gradient)."""

    name = "byol"
    towers = (
        Tower("backbone"),
        Tower("projector", "head"),
        Tower("predictor", "head"),
        Tower("target_backbone", ema_of="backbone"),
        Tower("target_projector", "head", ema_of="projector"),
    )
    output_tower = "projector"  # health checks: the projection z the loss compares
    exact_accumulation = True  # per-image loss terms; the target moves once per optimizer step

    def __init__(self, backbone: nn.Module, cfg: Config, info: RunInfo):
        super().__init__()
        self.cfg = cfg
        self.total_steps = info.total_steps
        self.backbone = backbone
        self.projector = MLP([feature_dim(backbone), cfg.hidden_dim, cfg.output_dim], last_bias=cfg.output_bias)
        self.predictor = MLP([cfg.output_dim, cfg.hidden_dim, cfg.output_dim], last_bias=cfg.output_bias)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.register_load_state_dict_pre_hook(BYOL._check_output_bias)

    def _check_output_bias(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """A checkpoint from before the heads matched the reference holds output biases: say how to load it."""
        key = f"{prefix}projector.{len(self.projector) - 1}.bias"
        if (key in state_dict) != self.cfg.output_bias:
            found = "has" if key in state_dict else "lacks"
            raise ConfigError(
                f"this BYOL checkpoint {found} biases on the heads' output layers: load it with "
                f"byol.output_bias={str(key in state_dict).lower()}"
            )

    def tau(self, step: int) -> float:
        return momentum_at(self.cfg.base_momentum, step, self.total_steps)

    def compute_loss(self, crops: list[torch.Tensor], ctx: StepContext, targets: Any = None) -> StepOutput:
        z1, z2 = per_view(lambda x: self.projector(self.backbone(x)), crops)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1, t2 = per_view(lambda x: self.target_projector(self.target_backbone(x)), crops)
        loss = (regression_loss(p1, t2) + regression_loss(p2, t1)).mean()
        return StepOutput(loss, {"tau": self.tau(ctx.step), "z_std": embedding_std(z1)})

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        """Target <- tau_k target + (1 - tau_k) online, with the online parameters just updated (step k)."""
        ema_update_pairs(self.ema_pairs(), self.tau(ctx.step))  # every declared EMA pair (``towers``)

    def collapse_signals(self) -> tuple[CollapseSignal, ...]:
        """The defaults plus this method's collapse signature (docs/methods.md)."""
        return super().collapse_signals() + (
            z_std_collapse(
                self.cfg.output_dim,
                "raise byol.base_momentum (0.99-0.996: a slower target), keep the predictor, lower optim.base_lr",
            ),
        )


def build(cfg: Any, backbone: nn.Module, info: RunInfo) -> BYOL:
    return BYOL(backbone, cfg.byol, info)


ENTRY = register_method(
    MethodEntry(
        "byol",
        Config,
        build,
        validate,
        "BYOL (Grill et al. 2020): predict an EMA target's projection of the other view; no negatives",
    )
)
