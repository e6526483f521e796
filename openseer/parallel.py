"""Scale-out from outside the model: DDP or FSDP2 sharding, activation checkpointing, group batch norm.

Methods and backbones never import any of this. :func:`prepare_model` takes a built method and, according to
``cfg.parallel``, (1) converts its batch norms to group statistics (:mod:`openseer.norm`), (2) makes chosen
residual blocks recompute their activations in the backward pass, and (3) wraps it for data parallelism:

* ``ddp``: ``DistributedDataParallel`` (one full replica per process);
* ``fsdp``: FSDP2 ``fully_shard`` on every residual block (or stage) of every backbone tower the method
  declares (``Method.towers``: EMA copies too), on every head tower, then on the whole method (ZeRO-3:
  parameters, gradients and optimizer state are split over the processes), with a bf16/fp16
  ``MixedPrecisionPolicy`` on GPUs and optional CPU offload.

All of it is a no-op at world size 1 except activation checkpointing, which also saves memory on one device.
Blocks are found by structure (timm RegNet ``s1..s4`` / ResNet ``layer1..4`` / ``stages[i].blocks`` / ViT
``blocks``; an EMA copy (DINO's teacher, BYOL's target) is sharded exactly like its online tower), and the
wrappers swap classes in place, so parameter names, state dicts and exported backbones do not change.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from openseer import dist
from openseer.norm import batchnorm_group, convert_batchnorm

PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---- blocks ------------------------------------------------------------------------------------------------
def find_blocks(backbone: nn.Module) -> list[list[nn.Module]]:
    """The residual blocks of a backbone, grouped by stage (outer list: stages in order)."""
    stages = []
    for name, child in backbone.named_children():
        is_regnet_stage = name[:1] == "s" and name[1:].isdigit()
        is_resnet_stage = name.startswith("layer") and name[5:].isdigit()
        if is_regnet_stage or is_resnet_stage:
            stages.append(list(child.children()))
    if not stages and isinstance(getattr(backbone, "stages", None), nn.Module):
        for stage in backbone.stages.children():
            blocks = getattr(stage, "blocks", stage)
            stages.append(list(blocks.children()))
    if not stages and isinstance(getattr(backbone, "blocks", None), nn.Sequential):
        stages.append(list(backbone.blocks.children()))  # a timm ViT: one stage of transformer blocks
    return [s for s in stages if s]


# ---- activation checkpointing ----------------------------------------------------------------------------
_CKPT_CLASSES: dict[type, type] = {}


@contextlib.contextmanager
def _frozen_norm_stats(block: nn.Module):
    """During recomputation, batch norms must not update their running statistics a second time."""
    norms = [m for m in block.modules() if isinstance(m, _BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _checkpointed_class(base: type) -> type:
    if base in _CKPT_CLASSES:
        return _CKPT_CLASSES[base]
    base_forward = base.forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not (torch.is_grad_enabled() and self.training):
            return base_forward(self, *args, **kwargs)

        def contexts():
            return contextlib.nullcontext(), _frozen_norm_stats(self)

        return checkpoint(base_forward, self, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    cls = type(f"Checkpointed{base.__name__}", (base,), {"forward": forward, "_base_block_class": base})
    _CKPT_CLASSES[base] = cls
    return cls


def apply_activation_checkpointing(
    backbone: nn.Module, every: int = 1, stages: list[int] | tuple[int, ...] = ()
) -> int:
    """Recompute the activations of every ``every``-th block of the chosen 1-based ``stages`` (all if empty).

    The forward output and the gradients are unchanged (same ops, recomputed); only the activations kept for
    the backward pass shrink. Returns the number of blocks wrapped.
    """
    all_stages = find_blocks(backbone)
    if not all_stages:
        raise ValueError(f"{type(backbone).__name__}: no residual blocks found for activation checkpointing")
    bad = [s for s in stages if not 1 <= s <= len(all_stages)]
    if bad:
        raise ValueError(f"parallel.checkpoint_stages={list(stages)}: this backbone has stages 1..{len(all_stages)}")
    n = 0
    for si, blocks in enumerate(all_stages, start=1):
        if stages and si not in stages:
            continue
        for bi, block in enumerate(blocks):
            if bi % every == 0:
                base = getattr(type(block), "_base_block_class", type(block))
                block.__class__ = _checkpointed_class(base)
                n += 1
    return n


# ---- FSDP2 -------------------------------------------------------------------------------------------------
def shard_model(
    method: nn.Module,
    device: torch.device,
    unit: str = "block",
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to the blocks (or stages) of every declared backbone tower, every head tower,
    then the whole method (``method`` is an :class:`openseer.methods.base.Method`: its ``tower_modules``).

    ``param_dtype`` (bf16/fp16) gathers and computes in that dtype while gradients are reduced and the
    optimizer steps in float32. Returns ``method`` itself (its class becomes an ``FSDPModule``).
    """
    mesh = init_device_mesh(device.type, (dist.world_size(),))
    kwargs: dict[str, Any] = {
        "mesh": mesh,
        "reshard_after_forward": reshard_after_forward,
        "offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy(),
    }
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    # every declared tower, EMA copies included: a copy is sharded exactly like its online tower (each
    # parameter on dim 0), so the EMA update runs shard by shard
    fp32_names = tuple(getattr(method, "fp32_modules", ()))
    for tower, module in method.tower_modules():
        if tower.role == "backbone":
            _shard_backbone(module, unit, kwargs)
        elif tower.path not in fp32_names and any(True for _ in module.parameters()):
            fully_shard(module, **kwargs)  # a head (DINO's 65536 x 256 last layer is larger than a ViT-S block)
    # float32 units (SwAV's prototypes): gathered and computed in float32 whatever param_dtype is
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    for name in fp32_names:
        fully_shard(method.get_submodule(name), **{**kwargs, "mp_policy": fp32})
    if param_dtype is not None:  # the method's inputs stay as given: precomputed codes are never cast
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype, torch.float32, cast_forward_inputs=False)
    fully_shard(method, **kwargs)
    return method


def _shard_backbone(backbone: nn.Module, unit: str, kwargs: dict[str, Any]) -> None:
    for blocks in find_blocks(backbone):
        if unit == "stage":
            fully_shard(_common_parent(backbone, blocks), **kwargs)
        else:
            for block in blocks:
                fully_shard(block, **kwargs)


def _common_parent(root: nn.Module, blocks: list[nn.Module]) -> nn.Module:
    for module in root.modules():
        children = list(module.children())
        if children and all(any(b is c for c in children) for b in blocks):
            return module
    raise ValueError("cannot find the stage module holding these blocks")


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


# ---- the one entry point used by the training loop ------------------------------------------------------
def prepare_model(method: nn.Module, pcfg: Any, device: torch.device, precision: str = "fp32") -> nn.Module:
    """Convert norms, checkpoint blocks and wrap ``method`` for ``dist.world_size()`` processes.

    Returns the module to call in the loop: ``method`` itself at world size 1 and with FSDP (sharded in
    place), or a DDP wrapper. Build the optimizer *after* this call (FSDP replaces the parameters).
    """
    if pcfg.activation_checkpointing:  # the trained backbones only: EMA copies run without gradients
        for _, backbone in method.tower_modules("backbone", ema=False):
            apply_activation_checkpointing(backbone, pcfg.recompute_every, pcfg.checkpoint_stages)
    if dist.world_size() == 1:
        return method
    if pcfg.sync_batchnorm:
        convert_batchnorm(method, batchnorm_group(pcfg.batchnorm_group_size))
    if pcfg.strategy == "fsdp":
        # Parameters in bf16/fp16 on GPUs; on CPU autocast alone does the low-precision compute (openseer's
        # fp32 fallback for bf16 grouped convs on 1x1 inputs needs fp32 weights).
        param_dtype = PRECISION_DTYPES.get(precision) if device.type == "cuda" else None
        return shard_model(
            method,
            device,
            pcfg.fsdp_unit,
            param_dtype,
            pcfg.fsdp_reshard_after_forward,
            pcfg.fsdp_cpu_offload,
        )
    return wrap_data_parallel(method, device)


def wrap_data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    if dist.world_size() == 1:
        return model

    ids = [device.index] if device.type == "cuda" else None
    # SwAV's loss uses every parameter each step, but frozen prototypes receive no update: gradients still
    # flow to them, so find_unused_parameters is not needed.
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=True)


def no_gradient_sync(model: nn.Module):
    """Context for accumulation micro-batches that must not all-reduce yet (DDP ``no_sync``).

    FSDP2 reduce-scatters every micro-batch instead (keeping unsharded gradients would cost the memory FSDP
    saves); the sum is the same.
    """
    if hasattr(model, "no_sync") and not is_sharded(model):
        return model.no_sync()
    return contextlib.nullcontext()


def grad_norm(parameters) -> torch.Tensor:
    """Global L2 norm of the gradients, also when they are FSDP2-sharded DTensors (a plain tensor)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm


@torch.no_grad()
def clip_grads(parameters, max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale gradients so that their global norm is at most ``max_norm`` (works on sharded DTensors)."""
    coef = min(max_norm / (float(total_norm) + 1e-6), 1.0)
    if coef < 1.0:
        grads = [p.grad for p in parameters if p.grad is not None]
        torch._foreach_mul_(grads, coef)


def per_param_grad_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each full gradient, as a plain 1-d tensor (one entry per gradient, in order).

    A DDP gradient is whole on every process. An FSDP2 gradient is a ``DTensor`` sharded along dim 0: each
    process holds some rows, so its local norm is only part of the parameter's. The squared local norms of all
    sharded gradients are stacked and summed over the mesh in one all-reduce, then square-rooted: the norm of
    the full parameter's gradient, identical on every process, at the cost of one small collective per step.
    """
    if not grads:
        return torch.zeros(0)
    sharded = [isinstance(g, DTensor) and all(isinstance(pl, Shard) for pl in g.placements) for g in grads]
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    sq = torch.stack(torch._foreach_norm(local)).float().pow(2)
    if any(sharded):
        meshes = {g.device_mesh for g, s in zip(grads, sharded, strict=True) if s}
        if len(meshes) != 1 or len(next(iter(meshes)).shape) != 1:
            raise NotImplementedError("per-parameter clipping supports sharding over one 1-d device mesh")
        mask = torch.tensor(sharded, device=sq.device)
        summed = torch.where(mask, sq, torch.zeros_like(sq))
        tdist.all_reduce(summed, group=next(iter(meshes)).get_group())
        sq = torch.where(mask, summed, sq)
    for i, g in enumerate(grads):  # other DTensor layouts (replicated): the DTensor's own norm
        if isinstance(g, DTensor) and not sharded[i]:
            sq[i] = torch.linalg.vector_norm(g).full_tensor().float().pow(2)
    return sq.sqrt()


@torch.no_grad()
def clip_grads_per_param(parameters, max_norm: float) -> None:
    """Scale each parameter's gradient so that its own norm is at most ``max_norm`` (DINO ``utils.clip_gradients``:
    ``clip_coef = clip / (||g|| + 1e-6)``, applied when below 1); the norm is the full parameter's under FSDP2.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    coefs = (max_norm / (per_param_grad_norms(grads) + 1e-6)).clamp(max=1.0)
    for g, c in zip(grads, coefs.tolist(), strict=True):
        if c < 1.0:
            g.mul_(c)
