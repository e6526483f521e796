"""DeepCluster-v2 (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", sec. 3 and appendix: the improved DeepCluster). Reference implementation: facebookresearch/swav
``main_deepclusterv2.py``.

SwAV's network (backbone -> projection MLP -> unit sphere, multi-crop) without Sinkhorn: each process keeps a
memory bank of last epoch's embeddings of its images' global crops, with their dataset indices. At the start
of every epoch, spherical k-means (10 iterations) runs on the bank for each of several prototype sets
(3 x 3000 in the paper; set h clusters the bank of assigned crop h mod #crops), distributed as the reference:
the M step all-reduces per-centroid sums and counts. The centroids become the (never trained) prototypes, and
every crop of an image is trained with a cross-entropy at temperature 0.1 to predict its image's cluster.

Differences from the reference, and why:
- the reference fills the bank with a no-grad pass over the data before training (``init_memory``); here the
  first epoch is that pass: it only fills the bank (loss 0, every parameter group frozen for the epoch; each
  assigned crop through the network on its own, as there), so a run of E epochs trains for E - 1 (the memory
  fill costs a forward and backward of the global crops), and the lr schedule, which spans all E epochs, is
  one epoch further on at the first training step than the reference's, which starts after init_memory;
- the k-means initial centroids are K bank rows drawn by a generator seeded from (seed, epoch, set) over the
  *global* bank (the reference draws them from rank 0's bank), so clustering does not depend on the number of
  processes and a resumed run clusters exactly as an uninterrupted one;
- bank rows of a step are written after the optimizer step (``after_step``) and dropped for a skipped step.

The bank and the assignments are process-local state outside ``state_dict()``: ``global_extra_state`` gathers
them into one process-independent object for the checkpoint and ``load_global_extra_state`` takes this
process's share for any number of processes (same global batch). Gradient accumulation is exact
(``exact_accumulation = True``): targets are fixed for the epoch, so the loss is a per-image sum.

The training loop passes each micro-batch's dataset ``indices`` (``needs_indices``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

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

log = logging.getLogger("openseer")
IGNORE = -100  # target of an image without an assignment (cross_entropy's ignore_index)


@dataclass
class Config:
    hidden_dims: list[int] = field(
        default_factory=lambda: [2048], metadata={"help": "Hidden widths of the projection MLP (paper: [2048])."}
    )
    output_dim: int = field(default=128, metadata={"help": "Embedding dimension (paper: 128)."})
    head_batch_norm: bool = field(default=True, metadata={"help": "BatchNorm in the projection MLP."})
    num_prototypes: list[int] = field(
        default_factory=lambda: [3000, 3000, 3000],
        metadata={"help": "Clusters K of each prototype set (paper: 3 sets of 3000); each must be <= the dataset."},
    )
    temperature: float = field(default=0.1, metadata={"help": "Softmax temperature of the cross-entropy."})
    crops_for_assign: list[int] = field(
        default_factory=lambda: [0, 1], metadata={"help": "Global crops whose embeddings fill the memory bank."}
    )
    kmeans_iterations: int = field(default=10, metadata={"help": "k-means iterations per epoch (paper: 10)."})


def validate(cfg: Any) -> None:
    d = cfg.deepclusterv2
    if d.output_dim <= 0 or d.temperature <= 0 or d.kmeans_iterations < 0:
        raise ConfigError("deepclusterv2.output_dim and temperature must be > 0, kmeans_iterations >= 0")
    if not d.num_prototypes or min(d.num_prototypes) < 2:
        raise ConfigError(f"deepclusterv2.num_prototypes={d.num_prototypes}: each set needs at least 2 clusters")
    if cfg.parallel.strategy == "fsdp":
        raise ConfigError(
            "DeepCluster-v2 replaces its prototypes by k-means centroids each epoch and runs with "
            "parallel.strategy=ddp; set --strategy ddp"
        )
    if not d.crops_for_assign or any(not 0 <= c < cfg.aug.global_crops for c in d.crops_for_assign):
        raise ConfigError(
            f"deepclusterv2.crops_for_assign={d.crops_for_assign} must index global crops 0..{cfg.aug.global_crops - 1}"
        )


@torch.no_grad()
def spherical_kmeans(
    bank: torch.Tensor, positions: torch.Tensor, k: int, iterations: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids (k, d), assignment of each local row) of the reference's distributed k-means (collective).

    ``bank`` holds this process's rows, ``positions`` their global positions (-1: empty row). The k initial
    centroids are the rows at k valid global positions drawn with ``generator``, whichever process holds them.
    E step: nearest centroid by dot product; M step: all-reduced per-centroid sums / counts, re-normalised
    (a centroid that lost every row keeps its place).
    """
    valid_everywhere = dist.all_gather_cat(positions)
    valid_everywhere = valid_everywhere[valid_everywhere >= 0].sort().values
    if len(valid_everywhere) < k:
        raise ValueError(f"k-means: {len(valid_everywhere)} embeddings in the memory bank for {k} clusters")
    chosen = valid_everywhere[torch.randperm(len(valid_everywhere), generator=generator)[:k]].to(bank.device)
    centroids = torch.zeros(k, bank.shape[1], device=bank.device)
    order = positions.argsort()  # positions are unique: find the chosen ones held here by binary search
    found = torch.searchsorted(positions[order], chosen).clamp_max(len(positions) - 1)
    held = positions[order][found] == chosen
    centroids[held] = bank[order[found[held]]]
    dist.all_reduce_sum(centroids)
    mine = positions >= 0
    for it in range(iterations + 1):
        assignment = torch.cat([(rows @ centroids.t()).argmax(dim=1) for rows in bank.split(65536)])
        if it == iterations:
            break
        sums = torch.zeros_like(centroids).index_add_(0, assignment[mine], bank[mine])
        counts = torch.bincount(assignment[mine], minlength=k).to(bank.dtype)
        dist.all_reduce_sum(sums)
        dist.all_reduce_sum(counts)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
        centroids = F.normalize(centroids, dim=1)
    return centroids, assignment


class DeepClusterV2(Method):
    """Backbone + projection head + k-means prototypes, with the memory bank of last epoch's embeddings."""

    name = "deepclusterv2"
    towers = (Tower("backbone"), Tower("head", "head"), Tower("prototypes", "head"))
    output_tower = "head"  # health checks: the unit projection the prototypes score
    exact_accumulation = True
    needs_indices: ClassVar[bool] = True

    def __init__(self, backbone: nn.Module, cfg: Config, info: RunInfo, seed: int = 0):
        super().__init__()
        self.cfg, self.info, self.seed = cfg, info, seed
        self.backbone = backbone
        self.head = ProjectionMLP(
            [feature_dim(backbone), *cfg.hidden_dims, cfg.output_dim], batch_norm=cfg.head_batch_norm
        )
        self.prototypes = nn.ModuleList(Prototypes(cfg.output_dim, k) for k in cfg.num_prototypes)
        self.prototypes.requires_grad_(False)  # the reference never trains them (freeze for 1e10 iterations)
        rows = info.steps_per_epoch * info.accumulate_steps * info.local_batch
        # process-local, not buffers (DDP would broadcast rank 0's): see global_extra_state
        self.bank = torch.zeros(len(cfg.crops_for_assign), rows, cfg.output_dim)
        self.bank_index = torch.full((rows,), -1, dtype=torch.long)
        self.assignments: torch.Tensor | None = None  # (sets, max index + 1), IGNORE where unknown
        self.clustered_epoch = -1
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._micro = 0

    def _apply(self, fn, recurse=True):  # keep the bank on the module's device
        super()._apply(fn, recurse)
        self.bank = fn(self.bank)
        self.bank_index = self.bank_index.to(self.bank.device)
        return self

    # -- the loop's hooks -------------------------------------------------------------------------------------
    def forward(
        self,
        crops: list[Any],
        ctx: StepContext,
        targets: Any = None,
        mode: Literal["loss", "targets"] = "loss",
        indices: torch.Tensor | None = None,
    ) -> Any:
        if mode == "targets":
            return self.accumulation_targets(crops, ctx)
        if indices is None:
            raise ValueError("DeepCluster-v2 needs the dataset indices of each batch (forward(..., indices=...))")
        return self.compute_loss(crops, ctx, targets, indices)

    def before_step(self, ctx: StepContext) -> None:
        self._micro, self._pending = 0, []
        if ctx.epoch > 0 and self.clustered_epoch != ctx.epoch:
            self.cluster_memory(ctx.epoch)

    def compute_loss(
        self, crops: list[torch.Tensor], ctx: StepContext, targets: Any = None, indices: torch.Tensor | None = None
    ) -> StepOutput:
        batch = crops[0].shape[0]
        start = ((ctx.step % self.info.steps_per_epoch) * self.info.accumulate_steps + self._micro) * batch
        self._micro += 1
        if self.assignments is None:  # the first epoch fills the bank (the reference's init_memory)
            # each crop through the network on its own, as the reference's init_memory: batch norm sees one crop
            z = torch.cat([self.head(self.backbone(crops[c])) for c in self.cfg.crops_for_assign])
            self._pending.append((start, indices, z.detach().float().view(len(self.cfg.crops_for_assign), batch, -1)))
            return StepOutput(z.sum() * 0.0, {"memory_fill": 1.0})
        z = multicrop_forward(self.backbone, self.head, crops)
        n_crops = len(crops)
        loss = z.new_zeros((), dtype=torch.float32)
        labels = self.targets_of(indices.to(z.device))
        for h, protos in enumerate(self.prototypes):
            with torch.autocast(device_type=z.device.type, enabled=False):  # fp32 scores, as SwAV's
                scores = protos(z.float()) / self.cfg.temperature
            target = labels[h].repeat(n_crops)
            known = target != IGNORE
            # F.cross_entropy of a batch with no known target is nan; such a batch contributes nothing
            ce = F.cross_entropy(scores, target, ignore_index=IGNORE) if known.any() else scores.sum() * 0.0
            loss = loss + ce
        loss = loss / len(self.prototypes)
        emb = z.detach().float().view(n_crops, batch, -1)
        self._pending.append((start, indices, emb[self.cfg.crops_for_assign]))
        return StepOutput(loss, {"known_targets": float(known.float().mean()), "occupancy": cluster_occupancy(scores)})

    def after_step(self, ctx: StepContext) -> None:
        for start, indices, emb in self._pending:
            self.bank[:, start : start + emb.shape[1]] = emb.to(self.bank.device)
            self.bank_index[start : start + emb.shape[1]] = indices.to(self.bank.device)
        self._pending = []

    def skipped_step(self, ctx: StepContext) -> None:
        self._pending = []  # non-finite embeddings never enter the bank

    def param_groups(self, named, optim: Any) -> list[ParamGroup]:
        """The usual groups, all frozen during the memory-filling first epoch."""
        groups = split_groups(named, getattr(optim, "exclude_bias_and_norm", False))
        for g in groups:
            g.freeze_steps = max(g.freeze_steps, self.info.steps_per_epoch)
        return groups

    # -- clustering -----------------------------------------------------------------------------------------------
    def targets_of(self, indices: torch.Tensor) -> torch.Tensor:
        """(sets, B) cluster of each image; IGNORE for an image the last clustering did not see."""
        table = self.assignments.to(indices.device)
        inside = indices < table.shape[1]
        out = torch.full((table.shape[0], len(indices)), IGNORE, dtype=torch.long, device=indices.device)
        out[:, inside] = table[:, indices[inside]]
        return out

    def global_positions(self) -> torch.Tensor:
        """Position of each local bank row in the global bank (step-major, then process, then row); -1 if empty."""
        info = self.info
        per_step = info.accumulate_steps * info.local_batch
        local = torch.arange(self.bank.shape[1], device=self.bank.device)
        step, within = local // per_step, local % per_step
        pos = step * (per_step * info.world_size) + dist.rank() * per_step + within
        return torch.where(self.bank_index >= 0, pos, torch.full_like(pos, -1))

    @torch.no_grad()
    def cluster_memory(self, epoch: int) -> None:
        """k-means on the bank for every prototype set; centroids -> prototypes, clusters -> assignments."""
        positions = self.global_positions()
        max_index = dist.all_reduce_max(self.bank_index.max().clamp_min(0).reshape(1).clone())
        table = torch.full((len(self.prototypes), int(max_index) + 1), IGNORE, dtype=torch.long)
        all_index = dist.all_gather_cat(self.bank_index).cpu()
        for h, protos in enumerate(self.prototypes):
            bank = self.bank[h % len(self.cfg.crops_for_assign)]
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1009 + h)
            k = protos.weight.shape[0]
            centroids, assignment = spherical_kmeans(bank, positions, k, self.cfg.kmeans_iterations, gen)
            protos.weight.copy_(centroids.to(protos.weight.dtype))
            everyone = dist.all_gather_cat(assignment).cpu()
            known = all_index >= 0
            table[h, all_index[known]] = everyone[known]
        self.assignments = table.to(self.bank.device)
        self.clustered_epoch = epoch

    # -- checkpoint state -------------------------------------------------------------------------------------------
    def _global_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every process's bank as one, rows in global-position order (collective): (sets, rows, d), (rows,)."""
        n, rows, d = self.bank.shape
        steps = self.info.steps_per_epoch
        bank = dist.all_gather_cat(self.bank.reshape(1, n, steps, -1, d).contiguous())  # (world, n, steps, P, d)
        index = dist.all_gather_cat(self.bank_index.reshape(1, steps, -1).contiguous())  # (world, steps, P)
        return bank.permute(1, 2, 0, 3, 4).reshape(n, -1, d).cpu(), index.permute(1, 0, 2).reshape(-1).cpu()

    def global_extra_state(self, ctx: StepContext) -> dict[str, Any]:
        bank, index = self._global_bank()
        assignments = None if self.assignments is None else self.assignments.cpu()
        memory = {
            "bank": bank,
            "bank_index": index,
            "assignments": assignments,
            "clustered_epoch": self.clustered_epoch,
        }
        return {"deepclusterv2_memory": memory}

    def load_global_extra_state(self, state: dict[str, Any], ctx: StepContext) -> None:
        state = state["deepclusterv2_memory"]
        steps, per_step = self.info.steps_per_epoch, self.info.accumulate_steps * self.info.local_batch
        world, rank = dist.world_size(), dist.rank()
        bank, index = state["bank"], state["bank_index"]
        if index.numel() != steps * per_step * world:
            raise ValueError(
                f"saved memory bank: {index.numel()} rows, expected {steps} steps x {per_step * world} images; "
                "resume with the same global batch and data"
            )
        mine = slice(rank * per_step, (rank + 1) * per_step)
        n, d = bank.shape[0], bank.shape[-1]
        device = self.head.mlp[0].weight.device
        self.bank = bank.reshape(n, steps, -1, d)[:, :, mine].reshape(n, -1, d).to(device).contiguous()
        self.bank_index = index.reshape(steps, -1)[:, mine].reshape(-1).to(self.bank.device).contiguous()
        a = state["assignments"]
        self.assignments = None if a is None else a.to(self.bank.device)
        self.clustered_epoch = int(state["clustered_epoch"])

    # -- health signals on the probe set (openseer.train.health) --------------------------------------------------
    def probe_signals(self, embeddings: torch.Tensor) -> dict[str, float]:
        """Code entropy (at the temperature, over ln K) and occupancy of the probe set's scores, averaged over
        the prototype sets; none before the first k-means (the prototypes are random until then)."""
        if self.assignments is None:
            return {}
        z = embeddings.to(self.prototypes[0].weight.device).float()
        scores = [protos(z) for protos in self.prototypes]
        return {
            "health_code_entropy": sum(code_entropy(s, self.cfg.temperature) for s in scores) / len(scores),
            "health_code_occupancy": sum(float(cluster_occupancy(s)) for s in scores) / len(scores),
        }

    # -- report ---------------------------------------------------------------------------------------------------
    def cluster_weights(self) -> torch.Tensor:
        return self.prototypes[0].weight.detach()

    def trivial_loss(self) -> float:
        """Uniform predictions over K clusters: ln K (averaged over the prototype sets)."""
        return sum(math.log(k) for k in self.cfg.num_prototypes) / len(self.cfg.num_prototypes)

    def collapse_signals(self) -> tuple[CollapseSignal, ...]:
        """The defaults plus this method's collapse signature (docs/methods.md)."""
        return super().collapse_signals() + (
            CollapseSignal(
                "occupancy",
                0.1,
                "below",
                "lower optim.base_lr or deepclusterv2.temperature, raise deepclusterv2.num_prototypes",
            ),
        )


def build(cfg: Any, backbone: nn.Module, info: RunInfo) -> DeepClusterV2:
    d = cfg.deepclusterv2
    images = info.steps_per_epoch * info.global_batch
    if max(d.num_prototypes) > images:
        raise ConfigError(
            f"deepclusterv2.num_prototypes={d.num_prototypes}: k-means needs at least as many images per epoch "
            f"({images}) as clusters; lower deepclusterv2.num_prototypes"
        )
    if info.total_steps <= info.steps_per_epoch:
        log.warning(
            "DeepCluster-v2 learns from its second epoch on (the first fills the memory bank that k-means "
            "clusters at its end): this run of %d steps, at most one epoch of %d, leaves the backbone untrained; "
            "give it at least 2 epochs",
            info.total_steps,
            info.steps_per_epoch,
        )
    return DeepClusterV2(backbone, d, info, seed=cfg.train.seed)


ENTRY = register_method(
    MethodEntry(
        "deepclusterv2",
        Config,
        build,
        validate,
        "DeepCluster-v2 (Caron et al. 2020): k-means on a memory bank each epoch, cross-entropy on the clusters",
    )
)
