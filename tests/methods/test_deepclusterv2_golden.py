"""Golden test: openseer's DeepCluster-v2 steps equal facebookresearch/swav ``main_deepclusterv2.py``'s.

The reference, re-written in plain torch from the text of ``main_deepclusterv2.py`` (and apex LARC, as in
``test_swav_golden.py``), for one process:

* ``init_memory``: before training, a no-grad pass over the data, each crop of ``crops_for_assign`` through
  the model on its own (in training mode), filling the memory bank and its dataset indices;
* ``cluster_memory`` at the start of every epoch: for each prototype set, ``nmb_kmeans_iters`` rounds of
  E step (argmax of dot products) and M step (per-centroid mean of its rows, re-normalised; an empty centroid
  keeps its place), one more E step; the centroids become the prototypes; ``assignments[h][index]``;
* ``train``: lr from the ``np.linspace`` warm-up + cosine list; multi-crop forward (consecutive crops of one
  resolution through the backbone together, projection head, L2 normalisation, every prototype set);
  ``loss = mean_h CE(scores_h / T, assignments[h][idx].repeat(crops), ignore_index=-100)``; the prototypes'
  gradients set to None (``freeze_prototypes_niters`` = 1e10: never trained); ``LARC(SGD(model.parameters(),
  momentum 0.9, weight_decay))``; then the detached embeddings of the assigned crops enter the bank.

Two documented differences (docs/methods.md) are given to the reference rather than tested: (1) k-means starts
from K bank rows that openseer draws with a generator seeded from (seed, epoch, set) over the global bank; the
reference draws ``torch.randperm`` from rank 0's bank, here with that generator; (2) openseer's first epoch is
the memory-fill pass and its lr schedule spans it, so the reference reads the schedule built over openseer's
epochs one epoch later.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openseer.config import derive, load_config
from openseer.methods import METHODS
from openseer.methods.base import RunInfo
from openseer.models.backbone import build_backbone
from openseer.train import build_trainer, train_step
from tests.methods.golden_steps import TINY, assert_same_training
from tests.methods.test_swav_golden import ReferenceLARC, main_swav_lr_schedule

BATCH, STEPS_PER_EPOCH, EPOCHS = 8, 2, 3  # epoch 0 fills the bank; 3 training steps, re-clustering before the last
DATASET = BATCH * STEPS_PER_EPOCH
TRAIN_STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def kmeans_generator(seed: int, epoch: int, h: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1009 + h)


class MainDeepClusterV2:
    """main_deepclusterv2.py for one process, in fp32, on openseer's modules."""

    def __init__(self, model, cfg, lr_schedule: np.ndarray):
        self.model, self.d, self.cfg, self.lr_schedule = model, cfg.deepclusterv2, cfg, lr_schedule
        sgd = torch.optim.SGD(
            model.parameters(), lr=float(lr_schedule[0]), momentum=0.9, weight_decay=cfg.optim.weight_decay
        )
        self.optimizer = ReferenceLARC(sgd, trust_coefficient=cfg.optim.trust_coefficient)
        self.memory_index = torch.zeros(DATASET).long()
        self.memory_embeddings = torch.zeros(len(self.d.crops_for_assign), DATASET, self.d.output_dim)

    @torch.no_grad()
    def init_memory(self, batches: list[tuple[torch.Tensor, list[torch.Tensor]]]) -> None:
        start_idx = 0
        for index, inputs in batches:
            n = inputs[0].size(0)
            outputs = [
                F.normalize(self.model.head.mlp(self.model.backbone(inputs[c])), dim=1) for c in self.d.crops_for_assign
            ]
            self.memory_index[start_idx : start_idx + n] = index
            for mb_idx, embeddings in enumerate(outputs):
                self.memory_embeddings[mb_idx][start_idx : start_idx + n] = embeddings
            start_idx += n

    @torch.no_grad()
    def cluster_memory(self, epoch: int) -> torch.Tensor:
        j = 0
        assignments = -100 * torch.ones(len(self.d.num_prototypes), DATASET).long()
        for i_k, k in enumerate(self.d.num_prototypes):
            bank = self.memory_embeddings[j]
            random_idx = torch.randperm(len(bank), generator=kmeans_generator(self.cfg.train.seed, epoch, i_k))[:k]
            centroids = bank[random_idx]
            for n_iter in range(self.d.kmeans_iterations + 1):
                local_assignments = torch.mm(bank, centroids.t()).max(dim=1)[1]
                if n_iter == self.d.kmeans_iterations:
                    break
                counts = torch.zeros(k).int()
                emb_sums = torch.zeros(k, self.d.output_dim)
                for c in range(k):
                    rows = (local_assignments == c).nonzero()[:, 0]
                    if len(rows) > 0:
                        emb_sums[c] = torch.sum(bank[rows], dim=0)
                        counts[c] = len(rows)
                mask = counts > 0
                centroids[mask] = emb_sums[mask] / counts[mask].unsqueeze(1)
                centroids = F.normalize(centroids, dim=1, p=2)
            self.model.prototypes[i_k].weight.copy_(centroids)
            assignments[i_k][self.memory_index] = local_assignments
            j = (j + 1) % len(self.d.crops_for_assign)
        return assignments

    def train_step(self, iteration: int, idx: torch.Tensor, inputs: list[torch.Tensor], assignments) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_schedule[iteration]
        sizes = torch.tensor([inp.shape[-1] for inp in inputs])
        idx_crops = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0)
        start, feats = 0, []
        for end in idx_crops:
            feats.append(self.model.backbone(torch.cat(inputs[start:end])))
            start = end
        emb = F.normalize(self.model.head.mlp(torch.cat(feats)), dim=1, p=2)
        output = [F.linear(emb, p.weight) for p in self.model.prototypes]
        emb = emb.detach()
        bs = inputs[0].size(0)
        loss = 0
        for h in range(len(self.d.num_prototypes)):
            scores = output[h] / self.d.temperature
            targets = assignments[h][idx].repeat(len(inputs))
            loss += F.cross_entropy(scores, targets, ignore_index=-100)
        loss /= len(self.d.num_prototypes)
        self.optimizer.zero_grad()
        loss.backward()
        for name, p in self.model.named_parameters():
            if "prototypes" in name:
                p.grad = None
        self.optimizer.step()
        start_idx = (iteration % STEPS_PER_EPOCH) * bs
        self.memory_index[start_idx : start_idx + bs] = idx
        for i, crop_idx in enumerate(self.d.crops_for_assign):
            self.memory_embeddings[i][start_idx : start_idx + bs] = emb[crop_idx * bs : (crop_idx + 1) * bs]
        return float(loss.detach())


def _cfg():
    extra = [
        "aug.local_crops=2",
        "aug.local_size=16",
        "deepclusterv2.hidden_dims=[32]",
        "deepclusterv2.output_dim=16",
        "deepclusterv2.num_prototypes=[6,5,4]",
        "deepclusterv2.kmeans_iterations=3",
        f"train.epochs={EPOCHS}",
        "optim.base_lr=150.0",  # peak lr 4.7 at batch 8, as the reference's 4.8: LARC moves weights visibly
        "optim.warmup_epochs=0",
    ]
    return load_config("deepclusterv2", TINY + extra)


def _batch(cfg, step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    epoch = step // STEPS_PER_EPOCH
    order = torch.randperm(DATASET, generator=torch.Generator().manual_seed(epoch))
    idx = order[(step % STEPS_PER_EPOCH) * BATCH :][:BATCH]
    g = torch.Generator().manual_seed(1000 + step)
    a = cfg.aug
    sizes = [a.global_size] * a.global_crops + [a.local_size] * a.local_crops
    return idx, [torch.randn(BATCH, 3, s, s, generator=g) for s in sizes]


def test_preset_is_main_deepclusterv2_settings():
    cfg = load_config("deepclusterv2")
    o, d = cfg.optim, cfg.deepclusterv2
    assert o.name == "lars" and o.lars_variant == "larc" and not o.exclude_bias_and_norm
    assert (d.num_prototypes, d.temperature, d.output_dim, d.kmeans_iterations) == ([3000] * 3, 0.1, 128, 10)


def test_three_training_steps_equal_main_deepclusterv2_py():
    cfg = _cfg()
    derived = derive(cfg, dataset_size=DATASET)
    assert derived.steps_per_epoch == STEPS_PER_EPOCH and derived.warmup_steps == 0
    torch.manual_seed(0)
    model = METHODS["deepclusterv2"].build(cfg, build_backbone(cfg.model), RunInfo.of(cfg, derived))
    reference = copy.deepcopy(model)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    # openseer's schedule over its EPOCHS (the first is the memory fill), read one epoch later by the reference
    lr = main_swav_lr_schedule(derived.peak_lr, derived.final_lr, 0.0, 0, EPOCHS, STEPS_PER_EPOCH)
    ref = MainDeepClusterV2(reference, cfg, lr[STEPS_PER_EPOCH:])
    trainer = build_trainer(cfg, model, derived, torch.device("cpu"))
    fill = [_batch(cfg, s) for s in range(STEPS_PER_EPOCH)]
    for step, (idx, crops) in enumerate(fill):
        assert train_step(trainer, [crops], step, 0, [idx]).finite
    ref.init_memory(fill)
    torch.testing.assert_close(model.bank, ref.memory_embeddings, rtol=1e-5, atol=1e-6)
    losses, assignments = [], None
    for t in range(TRAIN_STEPS):
        step = STEPS_PER_EPOCH + t
        idx, crops = _batch(cfg, step)
        if t % STEPS_PER_EPOCH == 0:
            assignments = ref.cluster_memory(step // STEPS_PER_EPOCH)
        ref_loss = ref.train_step(t, idx, [c.clone() for c in crops], assignments)
        result = train_step(trainer, [crops], step, step // STEPS_PER_EPOCH, [idx])
        assert result.finite
        torch.testing.assert_close(model.assignments, assignments, rtol=0, atol=0)
        losses.append((ref_loss, result.loss))
    assert_same_training(initial, reference, model, losses, atol=1e-5)
