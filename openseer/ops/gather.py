"""Collectives that keep the autograd graph: the global batch of a loss, with gradients. The one home of them.

Two gradient semantics, named by the ``grad`` argument of :func:`all_reduce_sum`:

* ``"sum"`` - the backward sums the incoming gradient over processes, so that N processes each computing the
  same loss from the collective, followed by DDP's gradient average, give exactly the single-process gradient
  on the concatenated batch. :func:`all_gather_with_grad` always works this way: it is
  ``torch.distributed.nn.all_gather``, facebookresearch/vicreg's ``FullGatherLayer`` (its backward
  all-reduces the stacked gradients with SUM) and google-research/simclr's ``tpu_cross_replica_concat`` (an
  all-reduce SUM, whose gradient is again an all-reduce SUM; ``run.py`` divides the loss by the number of
  replicas because ``apply_gradients`` sums them: a mean, as DDP's).
* ``"local"`` - forward sum, backward identity: each process's gradient is that of its own summand only, as
  an in-place ``torch.distributed.all_reduce`` on a tensor in the graph (autograd does not see it).
  facebookresearch/barlowtwins ``main.py`` sums the cross-correlation matrix this way, so after DDP's average
  its update is the single-process gradient divided by N; openseer's Barlow Twins matches it.

SimCLR (Chen et al. 2020, sec. 2 "Training with large batch size") computes NT-Xent over the *global* batch:
every process scores its own anchors against the embeddings of every process. The gradient of process r's
loss with respect to process s's embeddings must reach process s, so the backward pass of the gather sums
each slice's incoming gradients over the processes and hands the sum to the slice's owner (a reduce-scatter;
google-research/simclr ``tpu_cross_replica_concat`` does the same with an all-reduce). With every process's
loss a mean over its own anchors and DDP averaging parameter gradients, the update is that of the global mean.

Keys that need no gradient (MoCo v3's momentum keys) use :func:`openseer.dist.all_gather_cat` instead.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as tdist

from openseer import dist


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all-gather along dim 0. Backward: sum the gathered gradient over processes, keep own slice.

    (``torch.distributed.nn.functional.all_gather`` does the same but is deprecated as of torch 2.14; the
    all-reduce here works on every backend and costs world-size times a reduce-scatter's traffic, which is
    nothing next to the backbone for embeddings of a few hundred floats per image.)
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(tdist.get_world_size())]
        tdist.all_gather(parts, t)
        ctx.rows = t.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        start = tdist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (B, ...) from every process along dim 0, in rank order; differentiable.

    Rows ``[rank * B:(rank + 1) * B]`` of the result are this process's ``t``. Backward: the gradient of each
    slice is summed over all processes and flows into its owner's ``t``. Identity at world size 1. Every
    process must call it with the same shape, and every process must run the backward pass (a collective).
    """
    if dist.world_size() == 1:
        return t
    return _AllGatherWithGrad.apply(t.contiguous())


class _AllReduceSum(torch.autograd.Function):
    """Forward: all-reduce SUM. Backward: all-reduce SUM of the gradient (``"sum"``) or the gradient as is
    (``"local"``)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, grad: str) -> torch.Tensor:
        ctx.grad = grad
        out = t.clone()
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if ctx.grad == "local":
            return grad, None
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        return grad, None


def all_reduce_sum(t: torch.Tensor, grad: Literal["sum", "local"]) -> torch.Tensor:
    """Sum of ``t`` over processes, differentiable with the gradient semantics ``grad`` (module docstring):
    ``"sum"`` = ``torch.distributed.nn.all_reduce`` (exact global gradient after DDP's average), ``"local"`` =
    barlowtwins' in-place all-reduce (the global gradient / N after DDP's average). Identity in one process;
    a collective in both passes for ``"sum"``."""
    if grad not in ("sum", "local"):
        raise ValueError(f"all_reduce_sum: grad={grad!r}; choose 'sum' or 'local'")
    if dist.world_size() == 1:
        return t
    return _AllReduceSum.apply(t.contiguous(), grad)
