"""FSDP2 with bf16 parameters: SwAV's prototypes are their own float32 unit and precomputed codes are not cast."""

from __future__ import annotations

import torch
from torch import nn

from openseer.config import load_config
from openseer.methods import METHODS
from openseer.parallel import shard_model
from tests.dist.common import spawn
from tests.helpers import TINY_OVERRIDES, run_info, step_ctx


def bf16_sharded_step(rank: int, world: int) -> dict:
    # no batch norm: on CPU, F.batch_norm refuses bf16 weights beside float32 running statistics (GPUs accept
    # them; openseer only gathers bf16 parameters on GPUs)
    cfg = load_config("demo", [*TINY_OVERRIDES, "swav.head_batch_norm=false", "train.precision=bf16"])
    torch.manual_seed(0)
    info = run_info(8, world, accumulate=2)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone.num_features = 8
    method = METHODS["swav"].build(cfg, backbone, info)
    shard_model(method, torch.device("cpu"), "block", param_dtype=torch.bfloat16)
    seen: dict[str, list] = {"weight": [], "scores": [], "targets": []}

    def weight_dtype(module, args):
        seen["weight"].append(module.weight.dtype)

    method.prototypes.register_forward_pre_hook(weight_dtype)
    method.prototypes.register_forward_hook(lambda m, args, out: seen["scores"].append(out.dtype))
    def targets_dtype(module, args):  # runs after FSDP's own pre-forward hook, which may cast the inputs
        if len(args) > 2 and args[2] is not None:
            seen["targets"].extend(t.dtype for t in args[2])

    method.register_forward_pre_hook(targets_dtype)
    g = torch.Generator().manual_seed(rank)
    micro = [[torch.randn(2, 3, 24, 24, generator=g) for _ in range(2)] for _ in range(2)]
    ctx = step_ctx(0, info)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            codes = method(micro, ctx, mode="targets")
        loss = method(micro[0], ctx, codes[0]).loss
    loss.backward()
    return {
        "codes": [str(q.dtype) for q in codes[0]],
        "weight": sorted({str(d) for d in seen["weight"]}),
        "scores": sorted({str(d) for d in seen["scores"]}),
        "targets": sorted({str(d) for d in seen["targets"]}),
        "finite": bool(torch.isfinite(loss)),
    }


def test_prototypes_and_codes_stay_float32_under_bf16_fsdp(tmp_path):
    for result in spawn(bf16_sharded_step, 2, tmp_path):
        assert result["finite"]
        assert result["codes"] == ["torch.float32", "torch.float32"]
        assert result["weight"] == ["torch.float32"]  # gathered in float32, not in param_dtype
        assert result["scores"] == ["torch.float32"]
        assert result["targets"] == ["torch.float32"]  # the codes passed to the gradient pass are not cast
