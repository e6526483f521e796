"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers (Chen, Xie, He 2021).

A query network (backbone -> projector -> predictor) and a momentum network (a copy of backbone -> projector
whose parameters trail the query network's by an EMA, momentum 0.99 rising to 1 on a cosine). Each view's
query must find the other view's key of the same image among the keys of the whole global batch (InfoNCE at
temperature tau, scaled by 2 tau); the loss is symmetrised over the two views. Keys carry no gradient, so a
plain all-gather suffices; the label of query i on process r is r * n + i.

Reference: facebookresearch/moco-v3 ``moco/builder.py`` (``MoCo``, ``MoCo_ResNet``, ``MoCo_ViT``,
``_build_mlp``, ``contrastive_loss``) and ``main_moco.py`` (``adjust_moco_momentum``; LARS lr 0.6 x batch / 256,
wd 1e-6, momentum 0.99 with ``--moco-m-cos``, T 1.0 for ResNet-50; AdamW lr 1.5e-4 x batch / 256, wd 0.1,
T 0.2, 300 epochs, 40 warm-up, ``--stop-grad-conv1`` for ViT; ``vits.py`` for the frozen random patch
projection). As there, the momentum network is updated at the start of each step, before the keys are computed,
with the momentum of that step; projector: 2 layers on ResNets, 3 on ViTs, hidden 4096, output 256, the last BN
without affine parameters; predictor: 2 layers, ending in a BN without affine parameters on ViTs
(``MoCo_ViT``: ``_build_mlp(2, dim, mlp_dim, dim)``) and in a bias-free linear layer on ResNets
(``MoCo_ResNet``: ``last_bn=False``). ``model.vit_style: mocov3`` builds the reference's ViT itself.
Each view goes through the networks separately (batch-norm statistics per view). Gradient accumulation is not
exact: a micro-batch's queries only meet its own keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import reduce
from operator import mul
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from openseer import dist
from openseer.dist import all_gather_cat
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
    projector_layers: int = field(
        default=0, metadata={"help": "Projector layers; 0 = the reference's choice: 3 on a ViT, 2 otherwise."}
    )
    hidden_dim: int = field(default=4096, metadata={"help": "Hidden width of projector and predictor (4096)."})
    output_dim: int = field(default=256, metadata={"help": "Embedding dimension (256)."})
    temperature: float = field(
        default=0.2, metadata={"help": "InfoNCE temperature (ViT 0.2; the ResNet-50 recipe uses 1.0)."}
    )
    momentum: float = field(default=0.99, metadata={"help": "EMA momentum of the momentum network at step 0 (0.99)."})
    momentum_cosine: bool = field(
        default=True, metadata={"help": "Raise the momentum to 1 on a half cosine over the run (--moco-m-cos)."}
    )
    predictor_bn: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata={
            "help": "A BN without affine parameters after the predictor's output layer: auto = the reference's "
            "choice (on for ViTs, off otherwise); off loads ViT checkpoints written before openseer had it.",
            "resumable": True,
        },
    )
    freeze_patch_embed: bool = field(
        default=True,
        metadata={
            "help": "ViT backbones: a random, frozen patch projection (sec. 4.1, --stop-grad-conv1), "
            "which removes the training instability of ViTs; ignored for backbones without patch_embed."
        },
    )


def validate(cfg: Any) -> None:
    s = cfg.mocov3
    if s.projector_layers < 0 or s.hidden_dim <= 0 or s.output_dim <= 0:
        raise ConfigError("mocov3.hidden_dim and output_dim must be positive, projector_layers >= 0")
    if s.temperature <= 0:
        raise ConfigError(f"mocov3.temperature={s.temperature} must be positive")
    if not 0.0 <= s.momentum <= 1.0:
        raise ConfigError(f"mocov3.momentum={s.momentum} must be in [0, 1]")
    require_two_views(cfg, "mocov3")


def freeze_patch_projection(backbone: nn.Module) -> None:
    """MoCo v3's random patch projection: re-initialise ``patch_embed.proj`` as ``vits.py`` does (uniform with
    the Xavier bound of a 3 p^2 -> embed_dim linear map, zero bias) and take ``patch_embed`` out of training."""
    patch = backbone.patch_embed
    proj = getattr(patch, "proj", None)
    if isinstance(proj, nn.Conv2d):
        fan_in = proj.in_channels * reduce(mul, proj.kernel_size, 1)
        bound = math.sqrt(6.0 / float(fan_in + proj.out_channels))
        with torch.no_grad():
            nn.init.uniform_(proj.weight, -bound, bound)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
    for p in patch.parameters():
        p.requires_grad_(False)


def infonce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """``contrastive_loss`` of the reference: CE of this process's queries against every process's keys, x 2T.

    ``q`` (n, d) with gradient, ``k`` (n, d) without; both are l2-normalised here, in float32.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=1)
        k = all_gather_cat(F.normalize(k.detach().float(), dim=1))
        logits = q @ k.t() / temperature
        labels = torch.arange(q.shape[0], device=q.device) + dist.rank() * q.shape[0]
        return F.cross_entropy(logits, labels) * (2 * temperature)


class MoCoV3(Method):
    """Query network (backbone, projector, predictor) and its momentum copy (backbone, projector)."""

    name = "mocov3"
    towers = (
        Tower("backbone"),
        Tower("projector", "head"),
        Tower("predictor", "head"),
        Tower("momentum_backbone", ema_of="backbone"),
        Tower("momentum_projector", "head", ema_of="projector"),
    )
    output_tower = "projector"  # health checks: the projection z the loss compares
    exact_accumulation = False  # in-batch keys: a micro-batch's queries only meet its own keys

    def __init__(self, backbone: nn.Module, cfg: Config, info: RunInfo):
        super().__init__()
        self.cfg = cfg
        self.total_steps = info.total_steps
        self.micro_global_batch = info.local_batch * info.world_size
        is_vit = getattr(backbone, "patch_embed", None) is not None
        if is_vit and cfg.freeze_patch_embed:
            freeze_patch_projection(backbone)
        layers = cfg.projector_layers or (3 if is_vit else 2)
        width = feature_dim(backbone)
        self.backbone = backbone
        self.projector = MLP([width] + [cfg.hidden_dim] * (layers - 1) + [cfg.output_dim], last_bn="plain")
        predictor_bn = cfg.predictor_bn == "on" or (cfg.predictor_bn == "auto" and is_vit)
        predictor_dims = [cfg.output_dim, cfg.hidden_dim, cfg.output_dim]
        self.predictor = MLP(predictor_dims, last_bn="plain" if predictor_bn else "none", last_bias=False)
        self.momentum_backbone = frozen_copy(backbone)
        self.momentum_projector = frozen_copy(self.projector)
        self.register_load_state_dict_pre_hook(MoCoV3._check_predictor_bn)

    def _check_predictor_bn(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """ViT checkpoints from before the predictor's output BN: say which setting loads them."""
        last_linear = max(i for i, m in enumerate(self.predictor) if isinstance(m, nn.Linear))
        key = f"{prefix}predictor.{last_linear + 1}.running_mean"  # where a BN after it keeps its statistics
        has_bn = isinstance(self.predictor[-1], nn.BatchNorm1d)
        if any(k.startswith(f"{prefix}predictor.") for k in state_dict) and (key in state_dict) != has_bn:
            setting = "on" if key in state_dict else "off"
            raise ConfigError(
                f"this MoCo v3 checkpoint's predictor {'ends' if key in state_dict else 'does not end'} in a batch "
                f"norm: load it with mocov3.predictor_bn={setting}"
            )

    def momentum(self, step: int) -> float:
        if not self.cfg.momentum_cosine:
            return self.cfg.momentum
        return momentum_at(self.cfg.momentum, step, self.total_steps)

    @torch.no_grad()
    def before_step(self, ctx: StepContext) -> None:
        """The reference updates the momentum network at the start of each step, before the keys."""
        ema_update_pairs(self.ema_pairs(), self.momentum(ctx.step))  # every declared EMA pair (``towers``)

    def compute_loss(self, crops: list[torch.Tensor], ctx: StepContext, targets: Any = None) -> StepOutput:
        z1, z2 = per_view(lambda x: self.projector(self.backbone(x)), crops)
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1, k2 = per_view(lambda x: self.momentum_projector(self.momentum_backbone(x)), crops)
        t = self.cfg.temperature
        loss = infonce(q1, k2, t) + infonce(q2, k1, t)
        return StepOutput(loss, {"momentum": self.momentum(ctx.step), "z_std": embedding_std(q1)})

    def trivial_loss(self) -> float:
        """Every similarity equal: each of the two terms is 2T ln B for a global batch B."""
        return 2 * 2 * self.cfg.temperature * math.log(self.micro_global_batch)

    def collapse_signals(self) -> tuple[CollapseSignal, ...]:
        """The defaults plus this method's collapse signature (docs/methods.md)."""
        return super().collapse_signals() + (
            z_std_collapse(
                self.cfg.output_dim,
                "lower optim.base_lr or lengthen optim.warmup_epochs (MoCo v3 sec. 4: instability at large lr)",
            ),
        )


def build(cfg: Any, backbone: nn.Module, info: RunInfo) -> MoCoV3:
    return MoCoV3(backbone, cfg.mocov3, info)


ENTRY = register_method(
    MethodEntry(
        "mocov3",
        Config,
        build,
        validate,
        "MoCo v3 (Chen, Xie, He 2021): momentum keys gathered over the global batch, predictor, symmetric InfoNCE",
    )
)
