"""Batch norm whose statistics are all-reduced over a group of processes (SEER: groups of 64 GPUs).

``torch.nn.SyncBatchNorm`` only runs on CUDA tensors; this one all-reduces per-channel sums itself, so it
runs on gloo (CPU) and nccl (GPU) alike. It is applied from outside the model, like
``convert_sync_batchnorm``, but by swapping the class of each batch-norm module in place: parameter and
buffer names stay the same, so checkpoints and exported backbones still load into a plain timm model, and
timm's ``BatchNormAct2d`` keeps its activation.

Statistics: with N samples over the group and a per-channel shift s (the running mean, identical on every
process, which keeps the one-pass variance well conditioned), mean = s + sum(x - s) / N and
var = sum((x - s)^2) / N - (mean - s)^2, both in float32 from one all-reduce of [sum, sum of squares, count].
The backward pass all-reduces the per-channel sums of dy and dy * x_hat, which gives the exact input gradient
of full-batch batch norm; it saves only the input and the statistics, as native batch norm does. Running
statistics use the unbiased variance, as torch's batch norm does.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from openseer import dist


class _GroupBatchNorm(torch.autograd.Function):
    """Batch norm with statistics over a process group; backward all-reduces [sum dy, sum dy * x_hat].

    Saves only the input, mean and 1/std (like ``SyncBatchNorm``); x_hat is recomputed in the backward pass,
    so it costs the activation memory of native batch norm.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, shift, eps: float, group):
        c = x.shape[1]
        dims = [0, *range(2, x.ndim)]
        view = (1, c) + (1,) * (x.ndim - 2)
        xf = x.float()
        d = xf - shift.view(view)
        count = torch.full((1,), float(x.numel() // c), device=x.device)
        stats = torch.cat([d.sum(dims), (d * d).sum(dims), count])
        del d
        tdist.all_reduce(stats, op=tdist.ReduceOp.SUM, group=group)
        n = stats[-1]
        mean_d = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean_d * mean_d).clamp_min(0)
        mean = shift + mean_d
        invstd = torch.rsqrt(var + eps)
        y = (xf - mean.view(view)) * invstd.view(view)
        if weight is not None:
            y = y * weight.float().view(view) + bias.float().view(view)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n, ctx.group = n, group
        ctx.mark_non_differentiable(mean, var, n)
        return y.to(x.dtype), mean, var, n

    @staticmethod
    def backward(ctx, dy, _mean, _var, _n):
        x, weight, mean, invstd = ctx.saved_tensors
        c = x.shape[1]
        dims = [0, *range(2, x.ndim)]
        view = (1, c) + (1,) * (x.ndim - 2)
        x_hat = (x.float() - mean.view(view)) * invstd.view(view)
        dyf = dy.float()
        local = torch.cat([dyf.sum(dims), (dyf * x_hat).sum(dims)])
        sums = local.clone()
        tdist.all_reduce(sums, op=tdist.ReduceOp.SUM, group=ctx.group)
        scale = invstd if weight is None else invstd * weight.float()
        dx = (dyf - (sums[:c] / ctx.n).view(view) - x_hat * (sums[c:] / ctx.n).view(view)) * scale.view(view)
        # parameter gradients are this process's share; DDP/FSDP average them over processes like any other
        d_weight = local[c:].to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        d_bias = local[:c].to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        return dx.to(x.dtype), d_weight, d_bias, None, None, None


def group_batch_norm(bn: _BatchNorm, x: torch.Tensor, group) -> torch.Tensor:
    """Training-mode batch norm of ``x`` with statistics over every process of ``group``; updates ``bn``."""
    c = x.shape[1]
    if bn.running_mean is not None:
        shift = bn.running_mean.detach().float().clone()  # the buffer is updated below
    else:
        shift = torch.zeros(c, device=x.device)
    weight, bias = (bn.weight, bn.bias) if bn.affine else (None, None)
    y, mean, var, n = _GroupBatchNorm.apply(x, weight, bias, shift, bn.eps, group)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            unbiased = var * (n / (n - 1).clamp_min(1))
            bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
            bn.running_var.mul_(1 - m).add_(unbiased, alpha=m)
    return y


_CLASSES: dict[type, type] = {}


def _group_size(group) -> int:
    return tdist.get_world_size(group) if dist.is_initialized() else 1


def _all_reduce_class(base: type) -> type:
    """A subclass of ``base`` (a batch-norm class) whose training forward uses group statistics."""
    if base in _CLASSES:
        return _CLASSES[base]
    base_forward = base.forward
    has_act = issubclass(base, BatchNormAct2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = getattr(self, "bn_group", None)
        use_group = self.training or not self.track_running_stats
        if not use_group or _group_size(group) == 1:
            return base_forward(self, x)
        y = group_batch_norm(self, x, group)
        if has_act:  # timm BatchNormAct2d: norm -> drop -> act
            y = self.act(self.drop(y))
        return y

    cls = type(f"AllReduce{base.__name__}", (base,), {"forward": forward, "_base_norm_class": base})
    _CLASSES[base] = cls
    return cls


def convert_batchnorm(module: nn.Module, group=None) -> int:
    """Make every batch-norm layer of ``module`` use statistics over ``group`` (None: all processes).

    Returns how many layers were converted. Idempotent; the state dict is unchanged.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm):
            base = getattr(type(m), "_base_norm_class", type(m))
            m.__class__ = _all_reduce_class(base)
            m.bn_group = group
            n += 1
    return n


def batchnorm_group(group_size: int = 0):
    """The process group of this rank for batch norm: consecutive ranks in groups of ``group_size``.

    ``0`` (or a size >= world size) means all processes (returns None, the default group). Every process must
    call this (it creates the groups collectively); the world size must be a multiple of ``group_size``.
    """
    world = dist.world_size()
    if group_size <= 0 or group_size >= world:
        return None
    if world % group_size:
        raise ValueError(f"parallel.batchnorm_group_size={group_size} must divide the number of processes ({world})")
    group, _ = tdist.new_subgroups(group_size=group_size)
    return group
