"""``openseer info``: size a run before renting a cluster - parameters, FLOPs per image, memory per process.

Everything is computed on the meta device (no weights are allocated, so SEER-10B takes seconds):

* parameters of the backbone, head and prototypes;
* FLOPs per image for the configured crops, counted by ``torch.utils.flop_counter.FlopCounterMode`` (one
  multiply-add = 2 FLOPs; RegNet names such as "256GF" count multiply-adds at 224 px, i.e. half of this);
* memory per process: fp32 parameters, gradients and optimizer state (divided by the world size under FSDP,
  plus the largest gathered unit), and activations kept for the backward pass, measured by recording the
  tensors autograd saves in a forward pass (with activation checkpointing applied when asked).

The activation figure is a lower bound (allocator fragmentation, workspace and temporaries come on top;
budget 20-30% more). Low precision is modelled by halving activations and gathered parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from openseer.config import Config, global_batch_size, load_config, run_info
from openseer.methods import Method, get_method
from openseer.models.backbone import backbone_spec, count_parameters, create_backbone_from_spec
from openseer.parallel import apply_activation_checkpointing, find_blocks

GB = 1024**3


@dataclass
class ModelInfo:
    params_backbone: int
    params_head: int
    params_total: int
    flops_per_image: float  # forward, all crops of one image
    flops_by_crop: dict[int, float]  # forward of one crop of each size
    activation_bytes_per_image: float
    largest_unit_params: int
    memory: dict[str, float]  # bytes per process
    params_trainable: int = 0  # those with gradients and optimizer state (EMA copies have neither)
    teacher_flops_per_image: float = 0.0  # forward of the EMA backbones on the global crops (DINO, BYOL, MoCo v3)
    params_ema: int = 0  # parameters of the declared EMA towers (DINO's teacher, BYOL's target, ...)


def saved_activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of ``module(x)`` (parameters excluded, each tensor once)."""
    params = {id(p) for p in module.parameters()}
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        if id(t) not in params and t.is_floating_point():
            key = (t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t), t.shape, t.dtype)
            seen[key] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum()
    return sum(seen.values())


def _unit_sizes(method: Method, unit: str) -> list[int]:
    """Parameters of each FSDP unit: the blocks (or stages) of every declared backbone tower, EMA copies
    included, and every head tower (as :func:`openseer.parallel.shard_model` wraps them)."""
    sizes = []
    for _, backbone in method.tower_modules("backbone"):
        stages = find_blocks(backbone)
        if unit == "stage":
            sizes += [sum(count_parameters(b) for b in s) for s in stages]
        else:
            sizes += [count_parameters(b) for s in stages for b in s]
    return sizes + [count_parameters(head) for _, head in method.tower_modules("head")]


def model_info(cfg: Config, world_size: int = 1) -> ModelInfo:
    """Parameters, FLOPs and memory per process for ``cfg`` on ``world_size`` processes (meta device)."""
    p = cfg.parallel
    with torch.device("meta"):
        backbone = create_backbone_from_spec(backbone_spec(cfg.model))
        method = get_method(cfg.method).build(cfg, backbone, run_info(cfg, world_size))
    method.check_towers()
    n_backbone = sum(x.numel() for x in backbone.parameters())
    n_total = sum(x.numel() for x in method.parameters())
    n_trainable = sum(x.numel() for x in method.parameters() if x.requires_grad)
    crops = {cfg.aug.global_size: cfg.aug.global_crops}
    if cfg.aug.local_crops:
        crops[cfg.aug.local_size] = crops.get(cfg.aug.local_size, 0) + cfg.aug.local_crops
    flops, acts = {}, 0.0
    if p.activation_checkpointing:
        apply_activation_checkpointing(backbone, p.recompute_every, p.checkpoint_stages)
    backbone.train()
    for size, count in crops.items():
        # two images (batch norm needs more than one value per channel at 1x1), reported per image
        x = torch.empty(2, 3, size, size, device="meta")
        with FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                backbone(x)
        flops[size] = float(counter.get_total_flops()) / 2
        acts += count * saved_activation_bytes(backbone, x.requires_grad_()) / 2
    low_precision = cfg.train.precision in ("bf16", "fp16")
    if low_precision:
        acts /= 2
    fsdp = p.strategy == "fsdp" and world_size > 1
    shard = world_size if fsdp else 1
    units = _unit_sizes(method, p.fsdp_unit)
    largest = max(units) if units else 0
    param_bytes = 2 if low_precision else 4
    optimizer_states = 2 if cfg.optim.name == "adamw" else 1  # Adam's two moments; LARS/SGD momentum
    memory = {
        "parameters": 4 * n_total / shard,
        "gradients": 4 * n_trainable / shard,
        "optimizer": 4 * optimizer_states * n_trainable / shard,
        # FSDP gathers one unit and prefetches the next; DDP keeps a bf16/fp16 copy only inside autocast
        "gathered": 2 * param_bytes * largest if fsdp else 0.0,
        "activations": acts * cfg.train.batch_size,
    }
    if p.activation_checkpointing:  # one block's activations are recomputed at a time in the backward pass
        memory["activations"] += _largest_block_activation(backbone, cfg) / (2 if low_precision else 1)
    memory["total"] = sum(memory.values())
    return ModelInfo(
        n_backbone,
        n_total - n_backbone,
        n_total,
        sum(flops[s] * c for s, c in crops.items()),
        flops,
        acts,
        largest,
        memory,
        n_trainable,
        # every EMA backbone (DINO's teacher, BYOL's target, MoCo v3's momentum encoder) sees the global crops
        flops[cfg.aug.global_size] * cfg.aug.global_crops * len(method.tower_modules("backbone", ema=True)),
        sum(count_parameters(m) for _, m in method.tower_modules(ema=True)),
    )


def _largest_block_activation(backbone: nn.Module, cfg: Config) -> float:
    x = torch.empty(cfg.train.batch_size, 3, cfg.aug.global_size, cfg.aug.global_size, device="meta")
    sizes = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size()))
        for s in find_blocks(backbone)
        for b in s
    ]
    with torch.no_grad():
        backbone(x)
    for h in hooks:
        h.remove()
    return 8.0 * max(sizes, default=0)  # a bottleneck block keeps several tensors of its output's size


def _flops(f: float) -> str:
    return f"{f / 1e9:,.1f} GFLOPs" if f >= 1e9 else f"{f / 1e6:,.1f} MFLOPs"


def format_info(cfg: Config, info: ModelInfo, world_size: int, preset: str = "") -> str:
    p = cfg.parallel
    mem = info.memory
    crops = f"{cfg.aug.global_crops} x {cfg.aug.global_size}"
    if cfg.aug.local_crops:
        crops += f" + {cfg.aug.local_crops} x {cfg.aug.local_size}"
    global_batch = global_batch_size(cfg, world_size)
    lines = [
        f"{preset or 'config'}: {cfg.method} on "
        + (
            cfg.model.backbone
            if not cfg.model.regnet.depth
            else f"RegNet(d={cfg.model.regnet.depth}, "
            f"w0={cfg.model.regnet.w0}, wa={cfg.model.regnet.wa}, wm={cfg.model.regnet.wm}, "
            f"g={cfg.model.regnet.group_size})"
        ),
        f"parameters     backbone {info.params_backbone / 1e6:,.1f}M, head + prototypes "
        f"{info.params_head / 1e6:,.1f}M, total {info.params_total / 1e6:,.1f}M"
        + (
            f" (trained {info.params_trainable / 1e6:,.1f}M; EMA copies {info.params_ema / 1e6:,.1f}M)"
            if 0 < info.params_trainable < info.params_total
            else ""
        ),
        "FLOPs / image  "
        + ", ".join(f"{s} px: {_flops(f)}" for s, f in info.flops_by_crop.items())
        + f"; all crops ({crops}): {_flops(info.flops_per_image)} forward, "
        f"~{_flops(3 * info.flops_per_image)} forward+backward"
        + (" (+1 forward recomputed)" if p.activation_checkpointing else "")
        + (
            f"; EMA forward on the global crops {_flops(info.teacher_flops_per_image)}"
            if info.teacher_flops_per_image
            else ""
        ),
        f"run            {world_size} processes x {cfg.train.batch_size} images"
        f" x {cfg.train.accumulate_steps} accumulation = global batch {global_batch}; "
        f"strategy {p.strategy}, precision {cfg.train.precision}, activation checkpointing "
        f"{'on' if p.activation_checkpointing else 'off'}",
        "memory / process (estimate, lower bound):",
    ]
    for key in ("parameters", "gradients", "optimizer", "gathered", "activations", "total"):
        lines.append(f"  {key:<12} {mem[key] / GB:10.2f} GiB")
    return "\n".join(lines)


def info_main(preset: str, overrides: list[str], world_size: int) -> str:
    cfg = load_config(preset, overrides)
    return format_info(cfg, model_info(cfg, world_size), world_size, preset)


def count_config_parameters(cfg: Any) -> int:
    """Backbone parameters of ``cfg``, counted on the meta device (`count_parameters`, no weights allocated)."""
    with torch.device("meta"):
        return count_parameters(create_backbone_from_spec(backbone_spec(cfg.model)))
