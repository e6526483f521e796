"""All-gather that keeps the autograd graph: the global batch of a contrastive loss with gradients.

SimCLR (Chen et al. 2020, sec. 2 "Training with large batch size") computes NT-Xent over the *global* batch:
every process scores its own anchors against the embeddings of every process. The gradient of process r's
loss with respect to process s's embeddings must reach process s, so the backward pass of the gather sums
each slice's incoming gradients over the processes and hands the sum to the slice's owner (a reduce-scatter;
google-research/simclr ``tpu_cross_replica_concat`` does the same with an all-reduce). With every process's
loss a mean over its own anchors and DDP averaging parameter gradients, the update is that of the global mean.

Keys that need no gradient (MoCo v3's momentum keys) use :func:`openseer.dist.all_gather_cat` instead.
"""

from __future__ import annotations

import torch
import torch.distributed.nn.functional as dist_fn

from openseer import dist


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (B, ...) from every process along dim 0, in rank order; differentiable.

    Rows ``[rank * B:(rank + 1) * B]`` of the result are this process's ``t``. Backward: the gradient of each
    slice is summed over all processes and flows into its owner's ``t`` (``torch.distributed.nn`` all_gather;
    reduce-scatter on NCCL, all-to-all + sum on gloo). Identity at world size 1. Every process must call it
    with the same shape, and every process must run the backward pass (it is a collective).
    """
    if dist.world_size() == 1:
        return t
    return torch.cat(dist_fn.all_gather(t.contiguous()), dim=0)
