"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations (Chen, Kornblith, Norouzi,
Hinton 2020; SimCLR v2 head: Chen et al. 2020, "Big Self-Supervised Models are Strong Semi-Supervised Learners").

Two augmented views of every image go through the backbone together (one batch, so batch norm sees both) and a
projection MLP. Each embedding must pick out the other view of its image among the 2N - 1 other embeddings of
the *global* batch, by a softmax over cosine similarities at temperature tau (NT-Xent, paper eq. 1). The
negatives are gathered from every process with their gradients (:func:`openseer.ops.gather.all_gather_with_grad`),
so the loss and its gradient are those of the global batch, as the reference's ``tpu_cross_replica_concat``.

Reference: google-research/simclr ``tf2/objective.py`` (``add_contrastive_loss``) and ``tf2/model.py``
(``ProjectionHead``: ``num_proj_layers`` layers as wide as the backbone's features, BN everywhere, the last
one without ReLU and with a BN that has no shift; ``proj_out_dim`` 128). As there, the loss is the mean over
anchors of view 1 *plus* the mean over anchors of view 2, i.e. twice the paper's L averaged over the 2N anchors.
Optimizer (paper, ImageNet): LARS, lr 0.3 x batch / 256, weight decay 1e-6 without biases and BN, 10 warm-up
epochs, batch 4096, temperature 0.1. Gradient accumulation is not exact: the negatives of a micro-batch are
the micro-batch's (over all processes), not the accumulated batch's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from openseer import dist
from openseer.errors import ConfigError
from openseer.methods.base import CollapseSignal, Method, RunInfo, StepContext, StepOutput, Tower, z_std_collapse
from openseer.methods.registry import MethodEntry, register_method
from openseer.methods.two_views import require_two_views
from openseer.models.backbone import feature_dim
from openseer.models.heads import MLP
from openseer.ops.collapse import embedding_std
from openseer.ops.gather import all_gather_with_grad

LARGE_NUM = 1e9  # the reference masks each embedding's similarity to itself by subtracting this


@dataclass
class Config:
    projector_layers: int = field(
        default=3, metadata={"help": "Linear layers of the projection head (SimCLR v1: 2, v2: 3)."}
    )
    hidden_dim: int = field(
        default=0, metadata={"help": "Hidden width of the projection head; 0 = the backbone's feature width."}
    )
    output_dim: int = field(default=128, metadata={"help": "Embedding dimension the loss compares (128)."})
    temperature: float = field(
        default=0.1,
        metadata={"help": "NT-Xent temperature tau (0.1 at batch 4096 on ImageNet; 0.5 on CIFAR-10 at 512)."},
    )


def validate(cfg: Any) -> None:
    s = cfg.simclr
    if s.projector_layers < 1 or s.hidden_dim < 0 or s.output_dim <= 0:
        raise ConfigError("simclr.projector_layers and simclr.output_dim must be positive, hidden_dim >= 0")
    if s.temperature <= 0:
        raise ConfigError(f"simclr.temperature={s.temperature} must be positive")
    require_two_views(cfg, "simclr")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of this process's anchors against the global batch; returns (loss, contrastive accuracy).

    ``z1``, ``z2``: (n, d) embeddings of the two views of this process's n images. With B the global batch
    and h the unit embeddings, anchor i of view 1 is scored against the other view's B embeddings (its
    positive is its own image) and against the B - 1 other embeddings of its own view; likewise for view 2.
    Loss = mean_i CE(view 1 anchor i) + mean_i CE(view 2 anchor i), in float32.
    """
    with torch.autocast(device_type=z1.device.type, enabled=False):
        h1, h2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        n = h1.shape[0]
        big1, big2 = all_gather_with_grad(h1), all_gather_with_grad(h2)
        labels = torch.arange(n, device=h1.device) + dist.rank() * n
        self_mask = F.one_hot(labels, big1.shape[0]).to(h1.dtype) * LARGE_NUM
        logits_aa = h1 @ big1.t() / temperature - self_mask
        logits_bb = h2 @ big2.t() / temperature - self_mask
        logits_ab = h1 @ big2.t() / temperature
        logits_ba = h2 @ big1.t() / temperature
        logits_a = torch.cat([logits_ab, logits_aa], dim=1)
        logits_b = torch.cat([logits_ba, logits_bb], dim=1)
        loss = F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)
        accuracy = (logits_a.argmax(dim=1) == labels).float().mean()
    return loss, accuracy.detach()


class SimCLR(Method):
    """Backbone + projection MLP; NT-Xent over the global batch of two views."""

    name = "simclr"
    towers = (Tower("backbone"), Tower("projector", "head"))
    output_tower = "projector"  # health checks: the projection z the loss compares
    exact_accumulation = False  # in-batch negatives: a micro-batch only sees its own

    def __init__(self, backbone: nn.Module, cfg: Config, info: RunInfo):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        width = feature_dim(backbone)
        hidden = cfg.hidden_dim or width
        dims = [width] + [hidden] * (cfg.projector_layers - 1) + [cfg.output_dim]
        self.projector = MLP(dims, last_bn="scale")
        self.micro_global_batch = info.local_batch * info.world_size  # images that meet in one loss

    def compute_loss(self, crops: list[torch.Tensor], ctx: StepContext, targets: Any = None) -> StepOutput:
        x1, x2 = crops
        z = self.projector(self.backbone(torch.cat([x1, x2])))  # one batch: BN statistics over both views
        z1, z2 = z.chunk(2)
        loss, accuracy = nt_xent(z1, z2, self.cfg.temperature)
        return StepOutput(loss, {"contrast_acc": accuracy, "z_std": embedding_std(z)})

    def trivial_loss(self) -> float:
        """Every similarity equal: each of the two cross-entropies is ln(2B - 1) for a global batch B."""
        return 2 * math.log(2 * self.micro_global_batch - 1)

    def collapse_signals(self) -> tuple[CollapseSignal, ...]:
        """The defaults plus this method's collapse signature (docs/methods.md)."""
        return super().collapse_signals() + (
            z_std_collapse(
                self.cfg.output_dim,
                "raise the batch size or simclr.temperature, lower optim.base_lr (SimCLR sec. 5)",
            ),
        )


def build(cfg: Any, backbone: nn.Module, info: RunInfo) -> SimCLR:
    return SimCLR(backbone, cfg.simclr, info)


ENTRY = register_method(
    MethodEntry(
        "simclr",
        Config,
        build,
        validate,
        "SimCLR (Chen et al. 2020): NT-Xent over the global batch of 2 views, negatives gathered with gradients",
    )
)
