"""Shared fixtures of the two-view method tests: a tiny backbone, configs, and one 2-process spawn for all.

``two_process_results()`` runs every (method, variant) of :data:`CASES` in 2 gloo processes once per pytest
session (process start-up dominates) and caches the result; ``run_case(name, variant, 0, 1)`` is the
single-process reference on the concatenated batch.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from torch import nn

from openseer import dist
from openseer.methods.base import RunInfo, StepContext
from openseer.methods.registry import get_method
from openseer.parallel import prepare_model
from tests.dist.common import spawn

GLOBAL_BATCH, STEPS, SIZE = 16, 3, 12


class TinyBackbone(nn.Module):
    """Conv -> BN -> ReLU -> mean pool: 8 features; its BN makes the batch coupling real."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def method_config(name: str, **overrides):
    """The method's dataclass config with tiny widths (and the given overrides)."""
    tiny = {
        "simclr": {"projector_layers": 2, "hidden_dim": 16, "output_dim": 8, "temperature": 0.5},
        "mocov3": {"hidden_dim": 16, "output_dim": 8, "temperature": 0.5, "momentum": 0.9},
        "byol": {"hidden_dim": 16, "output_dim": 8, "base_momentum": 0.9},
        "simsiam": {"projector_layers": 2, "hidden_dim": 16, "output_dim": 8, "predictor_hidden_dim": 4},
    }[name]
    return get_method(name).config(**{**tiny, **overrides})


def full_config(name: str, global_crops: int = 2, local_crops: int = 0, batch_size: int = 4, **overrides):
    """A stand-in for the main Config: the method's section plus what its validate reads."""
    return SimpleNamespace(
        method=name,
        aug=SimpleNamespace(global_crops=global_crops, local_crops=local_crops),
        train=SimpleNamespace(batch_size=batch_size),
        **{name: method_config(name, **overrides)},
    )


def run_info(local_batch: int, world: int = 1, total_steps: int = STEPS) -> RunInfo:
    return RunInfo(local_batch * world, local_batch, world, 1, total_steps, total_steps)


def build(name: str, local_batch: int, world: int = 1, backbone: nn.Module | None = None, **overrides):
    cfg = full_config(name, **overrides)
    return get_method(name).build(cfg, backbone or TinyBackbone(), run_info(local_batch, world))


def crops(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(GLOBAL_BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64).float() for _ in range(2)]


def _replicate(t: torch.Tensor) -> torch.Tensor:
    """The gather 'removed': every process sees only its own rows (repeated to keep the shapes)."""
    return torch.cat([t] * dist.world_size())


# (method, variant) -> patches that break the cross-process term, and whether batch norm is synchronised
CASES: dict[tuple[str, str], tuple[dict[str, object], bool]] = {
    ("simclr", "exact"): ({}, True),
    ("simclr", "local-negatives"): ({"openseer.methods.simclr.all_gather_with_grad": _replicate}, True),
    ("simclr", "gather-without-grad"): ({"openseer.methods.simclr.all_gather_with_grad": dist.all_gather_cat}, True),
    ("mocov3", "exact"): ({}, True),
    ("mocov3", "local-keys"): ({"openseer.methods.mocov3.all_gather_cat": _replicate}, True),
    ("byol", "exact"): ({}, True),
    ("byol", "per-process-bn"): ({}, False),
    ("simsiam", "exact"): ({}, True),
    ("simsiam", "per-process-bn"): ({}, False),
}


def run_case(name: str, variant: str, rank: int, world: int) -> dict:
    """STEPS SGD steps on this rank's slice of a fixed global batch, wrapped as the loop wraps a method (DDP,
    all-reducing batch norm); returns the process-averaged losses and the final state dict."""
    patches, sync_bn = CASES[(name, variant)]
    torch.manual_seed(0)
    b = GLOBAL_BATCH // world
    method = build(name, b, world)
    pcfg = SimpleNamespace(
        activation_checkpointing=False, sync_batchnorm=sync_bn, batchnorm_group_size=0, strategy="ddp"
    )
    model = prepare_model(method, pcfg, torch.device("cpu"))
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    losses = []
    with contextlib.ExitStack() as stack:
        for target, new in patches.items():
            stack.enter_context(mock.patch(target, new))
        for step in range(STEPS):
            ctx = StepContext(step, 0, run_info(b, world))
            method.before_step(ctx)
            out = model([c[rank * b : (rank + 1) * b] for c in crops(step)], ctx)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            method.after_step(ctx)
            losses.append(float(dist.all_reduce_sum(out.loss.detach().clone())) / world)
    state = {k: v.clone() for k, v in method.state_dict().items() if isinstance(v, torch.Tensor)}
    return {"losses": losses, "state": state}


def gather_gradients(rank: int, world: int) -> dict:
    """all_gather_with_grad: each rank weights the gathered rows differently; returns its input's gradient."""
    from openseer.ops.gather import all_gather_with_grad

    t = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered = all_gather_with_grad(t)
    weights = torch.arange(gathered.numel(), dtype=torch.float32).reshape(gathered.shape) * (rank + 1)
    (gathered * weights).sum().backward()
    return {"gathered": gathered.detach(), "grad": t.grad}


def _all_cases(rank: int, world: int) -> dict:
    results = {key: run_case(*key, rank, world) for key in CASES}
    results["gather"] = gather_gradients(rank, world)
    return results


@functools.lru_cache(maxsize=1)
def two_process_results() -> list[dict]:
    """Every case on 2 gloo processes (one spawn per pytest session), per rank."""
    return spawn(_all_cases, 2, Path(tempfile.mkdtemp(prefix="openseer-two-view-")))


def worst_relative_difference(a: dict, b: dict) -> float:
    """Largest |a - b| of any floating tensor of two state dicts, relative to that tensor's largest entry."""
    return max(
        float((a[k] - v).abs().max()) / (float(v.abs().max()) + 1e-3) for k, v in b.items() if v.is_floating_point()
    )


def assert_two_processes_equal_one(name: str) -> None:
    """Both ranks' losses and final states equal one process on the concatenated batch (float32 noise only:
    measured <= 7e-5 relative; a removed gather or all-reduce gives >= 0.3)."""
    single = run_case(name, "exact", 0, 1)
    for rank, result in enumerate(two_process_results()):
        r = result[(name, "exact")]
        assert r["losses"] == pytest.approx(single["losses"], abs=1e-4), f"rank {rank}"
        assert worst_relative_difference(r["state"], single["state"]) < 1e-3, f"rank {rank}"


def assert_two_processes_differ(name: str, variant: str) -> None:
    """With the cross-process term removed (``variant``), 2 processes no longer equal one."""
    single = run_case(name, "exact", 0, 1)
    r = two_process_results()[0][(name, variant)]
    assert worst_relative_difference(r["state"], single["state"]) > 0.05
    assert max(abs(a - b) for a, b in zip(r["losses"], single["losses"], strict=True)) > 1e-2
