"""2 gloo processes: distributed Sinkhorn and all-reduce batch norm equal their full-batch results."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from openseer.norm import batchnorm_group, convert_batchnorm
from openseer.ops.sinkhorn import sinkhorn_knopp

B, K, C = 6, 10, 5


def _scores() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(2 * B, K, generator=g).clamp(-1, 1)


def _bn_input() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(2 * B, C, 3, 3, generator=g) * 3 + 1, torch.randn(2 * B, C, 3, 3, generator=g)


def _bn_run(x: torch.Tensor, upstream: torch.Tensor, group_size: int | None) -> dict:
    torch.manual_seed(0)
    bn = nn.Sequential(nn.BatchNorm2d(C), nn.ReLU())
    nn.init.uniform_(bn[0].weight, 0.5, 2.0)
    nn.init.normal_(bn[0].bias)
    if group_size is not None:
        assert convert_batchnorm(bn, batchnorm_group(group_size)) == 1
    x = x.clone().requires_grad_()
    for _ in range(2):  # two steps: running statistics accumulate
        (bn(x) * upstream).sum().backward()
    out = bn(x)
    bn.eval()
    return {
        "out": out.detach(),
        "grad_x": x.grad,
        "grad_w": bn[0].weight.grad,
        "grad_b": bn[0].bias.grad,
        "running": torch.stack([bn[0].running_mean, bn[0].running_var]),
        "eval_out": bn(x).detach(),
        "keys": sorted(bn.state_dict()),
    }


def on_each_rank(rank: int, world: int) -> dict:
    rows = slice(rank * B, (rank + 1) * B)
    x, up = _bn_input()
    return {
        "sinkhorn": sinkhorn_knopp(_scores()[rows], 0.05, 5),
        "bn_all": _bn_run(x[rows], up[rows], 0),
        "bn_groups_of_one": _bn_run(x[rows], up[rows], 1),
    }


@pytest.mark.dist
def test_sinkhorn_and_batchnorm_on_two_processes_equal_the_gathered_batch(two_process_results):
    results = [r["collectives"] for r in two_process_results]  # one spawn for all 2-process checks
    # Sinkhorn: the codes of each process equal its rows of one process's codes on the whole batch
    full = sinkhorn_knopp(_scores(), 0.05, 5)
    torch.testing.assert_close(torch.cat([r["sinkhorn"] for r in results]), full, rtol=1e-5, atol=1e-6)

    x, up = _bn_input()
    ref = _bn_run(x, up, None)  # plain BatchNorm2d on the whole batch
    for rank, r in enumerate(results):
        rows = slice(rank * B, (rank + 1) * B)
        got = r["bn_all"]
        assert got["keys"] == ref["keys"]  # state dict unchanged by the conversion
        torch.testing.assert_close(got["out"], ref["out"][rows], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["grad_x"], ref["grad_x"][rows], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["eval_out"], ref["eval_out"][rows], rtol=1e-5, atol=1e-5)
        # parameter gradients: each process holds its share; DDP's all-reduce sums them to the full one
        torch.testing.assert_close(got["running"], ref["running"], rtol=1e-5, atol=1e-5)
    for name in ("grad_w", "grad_b"):
        total = sum(r["bn_all"][name] for r in results)
        torch.testing.assert_close(total, ref[name], rtol=1e-4, atol=1e-4)

    # groups of one process: each process normalises with its own statistics, like plain batch norm
    for rank, r in enumerate(results):
        rows = slice(rank * B, (rank + 1) * B)
        local = _bn_run(x[rows], up[rows], None)
        torch.testing.assert_close(r["bn_groups_of_one"]["out"], local["out"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r["bn_groups_of_one"]["running"], local["running"], rtol=1e-5, atol=1e-5)
