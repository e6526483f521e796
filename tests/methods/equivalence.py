"""Shared by the method tests: a tiny backbone, a run context, and a few SGD steps of a method on 1 or N
gloo processes (each process takes its rows of the same global batch), for the "N processes equal one
process on the concatenated batch" checks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from openseer import dist
from openseer.methods.base import Method, RunInfo, StepContext
from openseer.norm import convert_batchnorm


class TinyBackbone(nn.Module):
    """conv -> BN -> ReLU -> global pool: a batch norm, so synchronised statistics matter."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def context(
    step: int = 0, epoch: int = 0, local_batch: int = 8, world: int = 1, steps_per_epoch: int = 4, accumulate: int = 1
) -> StepContext:
    info = RunInfo(
        global_batch=local_batch * world * accumulate,
        local_batch=local_batch,
        world_size=world,
        accumulate_steps=accumulate,
        steps_per_epoch=steps_per_epoch,
        total_steps=100,
    )
    return StepContext(step=step, epoch=epoch, info=info)


def global_batches(steps: int, batch: int, num_crops: int = 2, size: int = 8, seed: int = 0) -> list[list]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, 3, size, size, generator=g) for _ in range(num_crops)] for _ in range(steps)]


def sgd_steps(
    make_method: Callable[[], Method],
    batches: list[list[torch.Tensor]],
    lr: float = 0.05,
    steps_per_epoch: int = 100,
    extra: Callable[[Method, list[torch.Tensor], int], dict] | None = None,
) -> dict:
    """Train ``make_method()`` (seeded) with plain SGD on this process's rows; returns the global mean loss per
    step and the final parameters. With several processes, batch norms are synchronised and DDP averages
    gradients, as the training loop sets them up."""
    rank, world = dist.rank(), dist.world_size()
    torch.manual_seed(0)
    method = make_method()
    model: nn.Module = method
    if world > 1:
        convert_batchnorm(method)
        model = nn.parallel.DistributedDataParallel(method)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step, crops in enumerate(batches):
        local = [c.chunk(world)[rank] for c in crops]
        ctx = context(step, step // steps_per_epoch, local[0].shape[0], world, steps_per_epoch)
        method.before_step(ctx)
        kwargs = extra(method, crops, step) if extra else {}
        out = model(local, ctx, **kwargs)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        method.after_step(ctx)
        losses.append(float(dist.all_reduce_sum(out.loss.detach().clone()) / world))
    return {"losses": losses, "params": {k: v.detach().clone() for k, v in method.state_dict().items()}}


def assert_same_run(a: dict, b: dict, atol: float = 1e-4) -> None:
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-5, abs=atol / 10)
    for k, v in a["params"].items():
        if torch.is_tensor(v) and v.is_floating_point():
            torch.testing.assert_close(v, b["params"][k], atol=atol, rtol=1e-4, msg=k)


def differs(a: dict, b: dict, atol: float = 1e-2) -> bool:
    if any(abs(x - y) > atol for x, y in zip(a["losses"], b["losses"], strict=True)):
        return True
    return any(
        torch.is_tensor(v) and v.is_floating_point() and not torch.allclose(v, b["params"][k], atol=atol)
        for k, v in a["params"].items()
    )
