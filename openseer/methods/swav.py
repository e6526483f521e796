"""SwAV: Swapping Assignments between multiple Views (Caron et al. 2020, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments"), the method SEER (Goyal et al. 2021) scales up.

Every crop of an image is embedded (backbone -> projection MLP -> unit sphere) and scored against K learnable
prototypes. For each *global* crop, equipartitioned soft codes are computed by Sinkhorn-Knopp (no gradient,
float32, optionally together with a queue of recent embeddings so that small batches still spread over K
prototypes); every *other* crop must predict those codes with a softmax over its own scores at temperature
tau. Reference implementation: facebookresearch/swav ``main_swav.py``; VISSL ``swav_loss.py``.

Read top to bottom: config, validation, the module (multi-crop forward, queue, loss), the builder and its
registration. The loop talks to it only through the :class:`~openseer.methods.base.Method` contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
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
from openseer.models.backbone import feature_dim
from openseer.models.heads import ProjectionMLP, Prototypes, multicrop_forward
from openseer.ops.collapse import cluster_occupancy, code_entropy
from openseer.ops.sinkhorn import sinkhorn_knopp


@dataclass
class Config:
    hidden_dims: list[int] = field(
        default_factory=lambda: [2048],
        metadata={"help": "Hidden widths of the projection MLP (SwAV: [2048]; SEER-256GF: [8192, 8192])."},
    )
    output_dim: int = field(default=128, metadata={"help": "Embedding dimension (SwAV 128, SEER 256)."})
    head_batch_norm: bool = field(
        default=True, metadata={"help": "BatchNorm in the projection MLP (SwAV yes, SEER no)."}
    )
    num_prototypes: int = field(
        default=3000,
        metadata={
            "help": "Number of prototypes K (SwAV 3000, SEER 16000). 0 = from the pool: about sqrt(images), at "
            "most the global batch plus the queue (see prototypes_for_pool); the run's config.yaml holds the value."
        },
    )
    temperature: float = field(default=0.1, metadata={"help": "Softmax temperature tau of the swapped prediction."})
    epsilon: float = field(
        default=0.05,
        metadata={"help": "Sinkhorn entropy regularisation (SwAV 0.05, SEER-10B 0.03); smaller gives sharper codes."},
    )
    sinkhorn_iterations: int = field(default=3, metadata={"help": "Sinkhorn iterations (SwAV 3, SEER 10)."})
    crops_for_assign: list[int] = field(
        default_factory=lambda: [0, 1],
        metadata={"help": "Indices of the global crops whose codes are predicted by the other crops."},
    )
    freeze_prototypes_steps: int = field(
        default=313,
        metadata={
            "help": "Keep the prototypes fixed for the first N steps (lr 0 for their group): stabilises the start."
        },
    )
    queue_length: int = field(
        default=0,
        metadata={
            "help": "Global number of past embeddings used with the batch to compute codes (0 = none). Use it "
            "when the global batch is small compared with K (SwAV: 3840 at batch 256). Rounded down "
            "to a multiple of the global batch."
        },
    )
    queue_start_epoch: int = field(
        default=15, metadata={"help": "Epoch from which the queue starts filling; it is used once full."}
    )


SwAVConfig = Config


def validate(cfg: Any) -> None:
    s = cfg.swav
    for key in ("output_dim", "sinkhorn_iterations"):
        if getattr(s, key) <= 0:
            raise ConfigError(f"swav.{key}={getattr(s, key)} must be positive")
    if s.num_prototypes < 0 or s.num_prototypes == 1:
        raise ConfigError(f"swav.num_prototypes={s.num_prototypes} must be >= 2, or 0 (from the pool's size)")
    if s.temperature <= 0 or s.epsilon <= 0:
        raise ConfigError("swav.temperature and swav.epsilon must be positive")
    if not s.crops_for_assign or any(not 0 <= c < cfg.aug.global_crops for c in s.crops_for_assign):
        raise ConfigError(
            f"swav.crops_for_assign={s.crops_for_assign} must index global crops 0..{cfg.aug.global_crops - 1}"
        )
    if cfg.aug.global_crops + cfg.aug.local_crops < 2:
        raise ConfigError("SwAV needs at least 2 crops per image (aug.global_crops + aug.local_crops)")
    if s.queue_length < 0 or s.freeze_prototypes_steps < 0 or s.queue_start_epoch < 0:
        raise ConfigError("swav.queue_length, freeze_prototypes_steps and queue_start_epoch must be >= 0")


class SwAV(Method):
    """Backbone + projection head + prototypes, with the swapped-prediction loss and the feature queue."""

    name = "swav"
    towers = (Tower("backbone"), Tower("head", "head"), Tower("prototypes", "head"))
    output_tower = "head"  # health checks: the unit projection the prototypes score
    exact_accumulation = True  # codes of the whole accumulated batch come from mode="targets"
    fp32_modules = ("prototypes",)  # scores (and so codes) in float32, as VISSL's fp32 prototype unit

    def __init__(self, backbone: nn.Module, cfg: Config, local_queue_length: int = 0):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.head = ProjectionMLP(
            [feature_dim(backbone), *cfg.hidden_dims, cfg.output_dim], batch_norm=cfg.head_batch_norm
        )
        self.prototypes = Prototypes(cfg.output_dim, cfg.num_prototypes)
        # The queue is per process and is not a buffer: DDP would broadcast buffers from rank 0. It travels
        # in the state dict through get/set_extra_state instead.
        self.queue = torch.zeros(len(cfg.crops_for_assign), local_queue_length, cfg.output_dim)
        self.queue_filled = 0

    # -- queue state in checkpoints ------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"queue": self.queue, "queue_filled": self.queue_filled}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.queue = state["queue"].to(self.prototypes.weight.device)
        self.queue_filled = int(state["queue_filled"])

    def _apply(self, fn, recurse=True):  # keep the queue on the module's device
        super()._apply(fn, recurse)
        self.queue = fn(self.queue) if self.queue.is_floating_point() else self.queue
        return self

    # -- the queue across processes: checkpoints that resume on another number of processes --------------
    def global_queue_state(self, local_batch: int) -> dict[str, Any]:
        """Every process's queue as one, oldest step blocks last (collective: all processes must call it).

        Each local queue holds blocks of ``local_batch`` rows, newest first; the global queue interleaves the
        processes' blocks of the same step, so it is the queue one process would hold on the whole batch.
        """
        n, length, d = self.queue.shape
        ages = length // local_batch if local_batch else 0
        blocks = self.queue.reshape(1, n, ages, local_batch, d).contiguous()
        everyone = dist.all_gather_cat(blocks)  # (world, n, ages, local_batch, d)
        queue = everyone.permute(1, 2, 0, 3, 4).reshape(n, -1, d).cpu()
        return {"queue": queue, "queue_filled": self.queue_filled * dist.world_size()}

    def load_global_queue_state(self, state: dict[str, Any], local_batch: int) -> None:
        """This process's share of a queue saved by :meth:`global_queue_state` (any number of processes)."""
        queue, world = state["queue"], dist.world_size()
        n, length, d = queue.shape
        if length % (local_batch * world):
            raise ValueError(f"saved queue: {length} rows cannot split into {world} x {local_batch}")
        ages = length // (local_batch * world) if length else 0
        mine = queue.reshape(n, ages, world, local_batch, d)[:, :, dist.rank()].reshape(n, -1, d)
        self.queue = mine.to(self.queue.device, self.queue.dtype).contiguous()
        self.queue_filled = int(state["queue_filled"]) // world

    # -- the method contract ---------------------------------------------------------------------------------
    def param_groups(self, named: Any, optim: Any) -> list[ParamGroup]:
        """Prototypes in a group of their own, frozen (lr 0) for the first ``freeze_prototypes_steps``."""
        special = {"prototypes.": {"name": "prototypes", "freeze_steps": self.cfg.freeze_prototypes_steps}}
        return split_groups(named, optim.exclude_bias_and_norm, special)

    def before_step(self, ctx: StepContext) -> None:
        """Keep the prototypes on the unit sphere; remember the queue so that a skipped step can undo it."""
        self.prototypes.normalize()
        self._queue_before = (self.queue.clone(), self.queue_filled) if self.queue.shape[1] else None

    def skipped_step(self, ctx: StepContext) -> None:
        """A non-finite step pushed its (possibly NaN) embeddings into the queue: restore the queue."""
        saved = getattr(self, "_queue_before", None)
        if saved is not None:
            self.queue.copy_(saved[0])
            self.queue_filled = saved[1]

    def global_extra_state(self, ctx: StepContext) -> dict[str, Any]:
        return {"queue": self.global_queue_state(ctx.info.local_batch * ctx.info.accumulate_steps)}

    def load_global_extra_state(self, state: dict[str, Any], ctx: StepContext) -> None:
        if state.get("queue") is not None:
            self.load_global_queue_state(state["queue"], ctx.info.local_batch * ctx.info.accumulate_steps)

    def cluster_weights(self) -> torch.Tensor:
        return self.prototypes.weight

    def trivial_loss(self) -> float:
        """The loss of uniform codes and predictions, ln K: a run stuck here has learnt nothing."""
        return math.log(self.cfg.num_prototypes)

    # -- forward --------------------------------------------------------------------------------------------
    def embed(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """Unit embeddings of all crops, crop-major: rows [c*B:(c+1)*B] belong to crop c.

        Consecutive crops of the same resolution go through the backbone as one batch (as the reference
        does), so 2 global + 6 local crops cost two backbone calls.
        """
        return multicrop_forward(self.backbone, self.head, crops)

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """Prototype scores in float32 with autocast off: bf16 scores move Sinkhorn's codes by ~1% (epsilon
        0.05) and up to tens of percent per entry at small epsilon."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.prototypes(z.float())

    def compute_loss(
        self, crops: list[torch.Tensor], ctx: StepContext, targets: list[torch.Tensor] | None = None
    ) -> StepOutput:
        """SwAV loss for a multi-crop batch (list of (B, 3, h, w) tensors, global crops first).

        ``targets`` (one (B, K) tensor of codes per assigned crop) are computed beforehand, over the whole
        accumulated batch, by :meth:`accumulation_targets`; without them the codes come from this batch.
        """
        batch = crops[0].shape[0]
        z = self.embed(crops)
        scores = self.scores(z)
        codes = targets if targets is not None else self.assign(z, scores, batch, ctx.epoch)
        loss = self.swapped_prediction_loss(scores, codes, batch)
        return StepOutput(loss, {"occupancy": cluster_occupancy(scores[:batch])})

    def swapped_prediction_loss(self, scores: torch.Tensor, codes: list[torch.Tensor], batch: int) -> torch.Tensor:
        n_crops = scores.shape[0] // batch
        log_p = F.log_softmax(scores.float() / self.cfg.temperature, dim=1)
        loss = scores.new_zeros((), dtype=torch.float32)
        for q, crop_id in zip(codes, self.cfg.crops_for_assign, strict=True):
            others = [v for v in range(n_crops) if v != crop_id]
            sub = sum(-(q * log_p[v * batch : (v + 1) * batch]).sum(dim=1).mean() for v in others)
            loss = loss + sub / len(others)
        return loss / len(self.cfg.crops_for_assign)

    @torch.no_grad()
    def assign(self, z: torch.Tensor, scores: torch.Tensor, batch: int, epoch: int) -> list[torch.Tensor]:
        """Sinkhorn codes of each assigned crop of a crop-major batch; pushes the batch into the queue."""
        rows = [slice(c * batch, (c + 1) * batch) for c in self.cfg.crops_for_assign]
        return self._assign([z[r] for r in rows], [scores[r] for r in rows], epoch)

    @torch.no_grad()
    def accumulation_targets(self, micro_crops: list[list[torch.Tensor]], ctx: StepContext) -> list[list[torch.Tensor]]:
        """Codes of k micro-batches computed as for one k-times larger batch (exact gradient accumulation).

        A no-grad forward of every micro-batch gives the assigned crops' embeddings and scores; Sinkhorn runs
        once on all of them (and on the queue, which then receives all k micro-batches), and the codes are split
        back per micro-batch. The forward is the one the gradient pass repeats, so batch-norm layers see the
        same micro-batch statistics; their running statistics are restored so that they move once per
        micro-batch, as without this pass. Returns, per micro-batch, the list of codes ``compute_loss`` takes.
        """
        buffers = [(b, b.detach().clone()) for b in self.buffers()]
        zs: list[list[torch.Tensor]] = [[] for _ in self.cfg.crops_for_assign]
        ss: list[list[torch.Tensor]] = [[] for _ in self.cfg.crops_for_assign]
        sizes = []
        for crops in micro_crops:
            batch = crops[0].shape[0]
            sizes.append(batch)
            z = self.embed(crops)
            scores = self.scores(z)
            for i, c in enumerate(self.cfg.crops_for_assign):
                zs[i].append(z[c * batch : (c + 1) * batch])
                ss[i].append(scores[c * batch : (c + 1) * batch])
        for buf, saved in buffers:
            buf.copy_(saved)
        codes = self._assign([torch.cat(z) for z in zs], [torch.cat(s) for s in ss], ctx.epoch)
        per_crop = [q.split(sizes) for q in codes]
        return [[q[j] for q in per_crop] for j in range(len(micro_crops))]

    def _assign(self, zs: list[torch.Tensor], scores: list[torch.Tensor], epoch: int) -> list[torch.Tensor]:
        batch = zs[0].shape[0]
        use_queue = self.queue.shape[1] > 0 and epoch >= self.cfg.queue_start_epoch
        codes = [self._codes(i, z, s, use_queue) for i, (z, s) in enumerate(zip(zs, scores, strict=True))]
        if use_queue:
            self.queue_filled = min(self.queue_filled + batch, self.queue.shape[1])
        return codes

    def _codes(self, i: int, z: torch.Tensor, scores: torch.Tensor, use_queue: bool) -> torch.Tensor:
        out = scores.detach().float()
        batch = out.shape[0]
        if use_queue:
            with torch.autocast(device_type=out.device.type, enabled=False):
                if self.queue_filled >= self.queue.shape[1]:
                    # through the module: with FSDP2 the prototypes are their own unit, gathered in its forward
                    queue_scores = self.scores(self.queue[i])
                    out = torch.cat([queue_scores, out])
                # newest first, as the reference
                self.queue[i] = torch.cat([z.detach().float(), self.queue[i, :-batch]])
        return sinkhorn_knopp(out, self.cfg.epsilon, self.cfg.sinkhorn_iterations)[-batch:]

    # -- health signals on the probe set (openseer.train.health) ----------------------------------------------
    def probe_signals(self, embeddings: torch.Tensor) -> dict[str, float]:
        """The probe set's prototype scores: the mean entropy of the predictions at tau over ln K (1 = uniform)
        and the share of prototypes some probe image picks (a fixed image set, unlike the batch ``occupancy``)."""
        scores = self.scores(embeddings.to(self.prototypes.weight.device))
        return {
            "health_code_entropy": code_entropy(scores, self.cfg.temperature),
            "health_code_occupancy": float(cluster_occupancy(scores)),
        }

    def collapse_signals(self) -> tuple[CollapseSignal, ...]:
        """The defaults plus this method's collapse signature (docs/methods.md): the occupancy of the batch and
        of the probe set."""
        remedy = (
            "freeze the prototypes longer (swav.freeze_prototypes_steps), use a queue below batch 256 "
            "(swav.queue_length), lower swav.epsilon or optim.base_lr"
        )
        return super().collapse_signals() + (
            CollapseSignal("occupancy", 0.1, "below", remedy),
            CollapseSignal("health_code_occupancy", 0.1, "below", remedy),
        )


def global_queue(queue_length: int, global_batch: int) -> int:
    """The queue over all processes: ``swav.queue_length`` rounded down to a multiple of the global batch."""
    return queue_length - queue_length % global_batch if queue_length else 0


def prototypes_for_pool(images: int, sinkhorn_batch: int) -> int:
    """K for ``swav.num_prototypes: 0``, from what a user knows without labels: about sqrt(images) prototypes
    (the usual guess at a cluster count; ImageNet's 1.28M images give ~1100, SwAV used 3000), at most the
    embeddings Sinkhorn spreads over per step (global batch + queue: beyond it each code's equal share is below
    one image), at least 2. Against a fixed K = 30 on four pools at 600 steps: mixed (BENCHMARKS.md,
    issue 23 item 7)."""
    return max(2, min(round(math.sqrt(images)), sinkhorn_batch))


def _with_pool_prototypes(s: Config, images: int, global_batch: int) -> Config:
    """``s`` with ``num_prototypes: 0`` replaced by :func:`prototypes_for_pool` (``s`` itself otherwise)."""
    if s.num_prototypes:
        return s
    k = prototypes_for_pool(images, global_batch + global_queue(s.queue_length, global_batch))
    return replace(s, num_prototypes=k)


def resolve(cfg: Any, images: int, global_batch: int) -> list[str]:
    """Fill ``swav.num_prototypes: 0`` from the pool's size (in place); the note for the log."""
    if cfg.swav.num_prototypes:
        return []
    cfg.swav = s = _with_pool_prototypes(cfg.swav, images, global_batch)
    return [
        f"swav.num_prototypes=0 -> {s.num_prototypes} (about sqrt({images}) images, at most the global batch + queue)"
    ]


def build(cfg: Any, backbone: nn.Module, info: RunInfo) -> SwAV:
    """SwAV around ``backbone``; the queue length is rounded down to a multiple of the global batch;
    ``num_prototypes: 0`` not yet resolved (a build without a pool: ``openseer info``, tests) takes one epoch's
    images as the pool."""
    s = _with_pool_prototypes(cfg.swav, info.steps_per_epoch * info.global_batch, info.global_batch)
    queue_global = global_queue(s.queue_length, info.global_batch)
    return SwAV(backbone, s, local_queue_length=queue_global // info.world_size)


ENTRY = register_method(
    MethodEntry(
        name="swav",
        config=Config,
        build=build,
        validate=validate,
        resolve=resolve,
        summary="SwAV: swapped prediction of Sinkhorn codes over prototypes (Caron et al. 2020; SEER)",
    )
)
