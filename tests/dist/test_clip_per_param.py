"""Per-parameter gradient clipping (DINO's) under FSDP2: 2 gloo processes, each holding a shard of every
parameter, clip exactly as one process clipping the whole gradients."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.fsdp import fully_shard

from openseer.parallel import clip_grads_per_param
from tests.dist.common import spawn
from tests.test_parallel import _dino_clip_gradients, _model_with_grads

CLIP = 3.0


def _sharded_clip(rank: int, world: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    fully_shard(model[0])  # 7 rows over 2 processes: uneven shards (4 + 3)
    fully_shard(model)
    x = torch.randn(16, 5)
    # every process sees the whole batch: after the reduce-scatter's mean, its shard is the full gradient's rows
    model(x).pow(2).sum().backward()
    with torch.no_grad():
        model[0].bias.grad.mul_(0.1)  # as _model_with_grads
    local = [p.grad.to_local().clone() for p in model.parameters()]
    clip_grads_per_param(model.parameters(), CLIP)
    return [p.grad.full_tensor() for p in model.parameters()] + [
        p.grad.to_local() / g if g.numel() else g for p, g in zip(model.parameters(), local, strict=True)
    ]


@pytest.mark.dist
def test_fsdp2_per_param_clipping_uses_the_full_parameters_norm(tmp_path):
    reference = _model_with_grads()
    assert min(float(p.grad.norm()) for p in reference.parameters()) < CLIP
    _dino_clip_gradients(reference, CLIP)
    n = len(list(reference.parameters()))
    for rank, result in enumerate(spawn(_sharded_clip, 2, tmp_path)):
        full, ratios = result[:n], result[n:]
        for got, ref in zip(full, reference.parameters(), strict=True):
            torch.testing.assert_close(got, ref.grad, rtol=1e-5, atol=1e-7, msg=f"rank {rank}")
        # one coefficient per parameter on each shard, not one per shard's own norm
        for r in ratios:
            if r.numel():
                torch.testing.assert_close(r, torch.full_like(r, float(r.flatten()[0])), msg=f"rank {rank}")
