import dataclasses
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openseer import dist as real_dist
from openseer.config import ConfigError
from openseer.methods import deepclusterv2
from openseer.methods.deepclusterv2 import IGNORE, Config, DeepClusterV2, spherical_kmeans
from openseer.models.heads import multicrop_forward
from tests.dist.common import spawn
from tests.methods.equivalence import TinyBackbone, assert_same_run, context, differs, sgd_steps

STEPS_PER_EPOCH, BATCH = 2, 8


def numpy_kmeans(bank: np.ndarray, init_rows: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means in float64 with explicit loops: nearest centroid by dot product, mean, normalise."""
    centroids = bank[init_rows].copy()
    for it in range(iterations + 1):
        assign = np.array([int(np.argmax([row @ c for c in centroids])) for row in bank])
        if it == iterations:
            return centroids, assign
        for k in range(len(centroids)):
            members = bank[assign == k]
            if len(members):
                mean = members.mean(axis=0)
                centroids[k] = mean / np.linalg.norm(mean)


def test_kmeans_matches_numpy_with_the_same_init():
    g = torch.Generator().manual_seed(3)
    bank = F.normalize(torch.randn(60, 5, generator=g), dim=1)
    positions = torch.arange(60)
    positions[[7, 40]] = -1  # empty rows take no part
    centroids, assign = spherical_kmeans(bank, positions, 6, 10, torch.Generator().manual_seed(11))
    valid = positions[positions >= 0]
    init = valid[torch.randperm(len(valid), generator=torch.Generator().manual_seed(11))[:6]].numpy()
    keep = (positions >= 0).numpy()
    # the same init rows, k-means over the non-empty rows only
    b = bank.double().numpy()
    ref_c, _ = numpy_kmeans(b[keep], np.searchsorted(valid.numpy(), init), 10)
    np.testing.assert_allclose(centroids.numpy(), ref_c, atol=1e-5)
    np.testing.assert_array_equal(assign.numpy(), np.argmax(b @ ref_c.T, axis=1))
    assert len(set(assign.tolist())) > 1


def _model() -> DeepClusterV2:
    """The method as the loop builds it on this process (its rows of the global batch of BATCH images)."""
    cfg = Config(hidden_dims=[8], output_dim=4, num_prototypes=[3, 4], temperature=0.5)
    world = real_dist.world_size()
    info = context(local_batch=BATCH // world, world=world, steps_per_epoch=STEPS_PER_EPOCH).info
    return DeepClusterV2(TinyBackbone(), cfg, info)


def _crops(seed=0, batch=BATCH):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 8, 8, generator=g) for _ in range(2)] + [torch.randn(batch, 3, 6, 6, generator=g)]


def test_first_epoch_fills_the_bank_then_kmeans_sets_prototypes_and_targets():
    torch.manual_seed(0)
    model = _model()
    perm = torch.randperm(16)
    for step in range(STEPS_PER_EPOCH):  # epoch 0: memory fill, nothing to learn yet
        ctx = context(step, 0, BATCH, steps_per_epoch=STEPS_PER_EPOCH)
        model.before_step(ctx)
        out = model(_crops(step), ctx, indices=perm[step * BATCH : (step + 1) * BATCH])
        assert float(out.loss.detach()) == 0 and out.scalars["memory_fill"] == 1.0
        model.after_step(ctx)
    assert sorted(model.bank_index.tolist()) == list(range(16))
    groups = model.param_groups(model.named_parameters(), None)
    assert all(g.freeze_steps == STEPS_PER_EPOCH for g in groups)
    assert not any(p.requires_grad for p in model.prototypes.parameters())

    ctx = context(STEPS_PER_EPOCH, 1, BATCH, steps_per_epoch=STEPS_PER_EPOCH)
    model.before_step(ctx)
    assert model.clustered_epoch == 1 and model.assignments.shape == (2, 16)
    for h, protos in enumerate(model.prototypes):
        bank = model.bank[h % 2]
        nearest = (bank @ protos.weight.t()).argmax(dim=1)
        assert torch.equal(model.assignments[h, model.bank_index], nearest)  # targets are the nearest centroids
    crops, idx = _crops(5), torch.tensor([3, 9, 0, 15, 4, 4, 1, 99])  # 99: never seen -> ignored
    out = model(crops, ctx, indices=idx)

    # the loss by its formula: mean over sets of the mean over crops x known images of -log softmax(z.c/T)[target]
    z = multicrop_forward(model.backbone, model.head, crops).double()
    expected = 0.0
    for h, protos in enumerate(model.prototypes):
        logp = torch.log_softmax(z @ protos.weight.double().t() / 0.5, dim=1)
        terms = [
            -float(logp[c * BATCH + i, int(model.assignments[h, idx[i]])])
            for c in range(3)
            for i in range(BATCH)
            if idx[i] < 16
        ]
        expected += sum(terms) / len(terms)
    assert float(out.loss) == pytest.approx(expected / 2, rel=1e-5)
    assert model.targets_of(idx)[0, -1] == IGNORE
    before = model.bank.clone()
    model.skipped_step(ctx)  # a skipped step leaves the bank as it was
    model.after_step(ctx)
    assert torch.equal(model.bank, before)
    assert model.trivial_loss() == pytest.approx((math.log(3) + math.log(4)) / 2)


def test_too_many_clusters_for_the_data_is_a_config_error():
    cfg = types.SimpleNamespace(deepclusterv2=Config(num_prototypes=[3000]), train=types.SimpleNamespace(seed=0))
    with pytest.raises(ConfigError, match="lower deepclusterv2.num_prototypes"):
        deepclusterv2.build(cfg, TinyBackbone(), context(local_batch=8, steps_per_epoch=10).info)


def test_a_run_of_at_most_one_epoch_is_warned_about(caplog):
    cfg = types.SimpleNamespace(deepclusterv2=Config(num_prototypes=[3]), train=types.SimpleNamespace(seed=0))
    info = context(local_batch=8, steps_per_epoch=10).info
    with caplog.at_level("WARNING", logger="openseer"):
        deepclusterv2.build(cfg, TinyBackbone(), info)  # 100 steps = 10 epochs: fine
        assert not caplog.records
        deepclusterv2.build(cfg, TinyBackbone(), dataclasses.replace(info, total_steps=10))
    assert "leaves the backbone untrained" in caplog.text and "10 steps" in caplog.text


# ---- 2 processes = 1 process on the concatenated batch, through two k-means epochs ------------------------------

INDICES = [
    torch.randperm(16, generator=torch.Generator().manual_seed(e))[s * BATCH : (s + 1) * BATCH]
    for e in range(3)
    for s in range(STEPS_PER_EPOCH)
]


def _make():
    return _model()


def _indices(method, crops, step):
    return {"indices": INDICES[step].chunk(real_dist.world_size())[real_dist.rank()]}


def _train(batches):
    captured = {}

    def extra(method, crops, step):
        captured["method"] = method
        return _indices(method, crops, step)

    run = sgd_steps(_make, batches, steps_per_epoch=STEPS_PER_EPOCH, extra=extra)
    m = captured["method"]
    ctx = context(len(batches), 0, BATCH // real_dist.world_size(), real_dist.world_size(), STEPS_PER_EPOCH)
    run["assignments"] = m.assignments.clone()
    run["state"] = m.global_extra_state(ctx)
    return run, m, ctx


def _runs(rank, world, batches, single_state):
    right, m, ctx = _train(batches)
    local_bank = m.bank.clone()
    m.load_global_extra_state(single_state, ctx)  # a 1-process checkpoint re-split over 2 processes
    right["reloaded_equal"] = torch.allclose(m.bank, local_bank, atol=1e-5)
    deepclusterv2.dist = types.SimpleNamespace(**{**vars(real_dist), "all_reduce_sum": lambda t: t})
    broken, _, _ = _train(batches)  # k-means without the all-reduce: each process clusters its own rows
    deepclusterv2.dist = real_dist
    return {"right": right, "broken": broken}


@pytest.mark.dist
def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    batches = [[c.repeat(1, 1, 1, 1) for c in _crops(s, BATCH)] for s in range(3 * STEPS_PER_EPOCH)]
    single, _, _ = _train(batches)
    two = spawn(_runs, 2, tmp_path, batches, single["state"])
    for rank in range(2):
        right = two[rank]["right"]
        assert_same_run(right, single)
        assert torch.equal(right["assignments"], single["assignments"])
        mine, ref = right["state"]["deepclusterv2_memory"], single["state"]["deepclusterv2_memory"]
        torch.testing.assert_close(mine["bank"], ref["bank"], atol=1e-5, rtol=1e-4)
        assert torch.equal(mine["bank_index"], ref["bank_index"])
        assert right["reloaded_equal"]
        assert differs(two[rank]["broken"], single) or not torch.equal(
            two[rank]["broken"]["assignments"], single["assignments"]
        )
