"""DINO on 2 gloo processes (DDP, FSDP2) equals 1 process on the concatenated batch: losses, centre, student
and teacher parameters after a few AdamW steps with EMA updates."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from timm.models.regnet import RegNet, RegNetCfg
from timm.models.vision_transformer import VisionTransformer

from openseer import dist
from openseer.config import ParallelConfig
from openseer.methods.base import RunInfo, StepContext
from openseer.methods.dino import DINO, Config
from openseer.ops.optim import build_adamw
from openseer.parallel import prepare_model
from tests.dist.common import spawn

GLOBAL_BATCH, STEPS = 8, 3
INFO = RunInfo(GLOBAL_BATCH, GLOBAL_BATCH, 1, 1, steps_per_epoch=2, total_steps=STEPS)


def _crops() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(STEPS, GLOBAL_BATCH, 3, s, s, generator=g) for s in (16, 16, 8, 8)]


def _backbone(kind: str) -> torch.nn.Module:
    if kind == "regnet":  # batch norm in student and teacher, synchronised over the processes
        return RegNet(RegNetCfg(depth=6, w0=8, wa=10.0, wm=1.8, group_size=8), num_classes=0)
    return VisionTransformer(
        img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=0, dynamic_img_size=True
    )


def dino_steps(
    rank: int, world: int, strategy: str = "ddp", checkpointing: bool = False, backbone: str = "vit"
) -> dict:
    torch.manual_seed(0)
    backbone = _backbone(backbone)
    cfg = Config(out_dim=32, hidden_dim=24, bottleneck_dim=8, warmup_teacher_temp_epochs=2, freeze_last_layer_epochs=1)
    method = DINO(backbone, cfg, n_global=2, info=INFO)
    pcfg = ParallelConfig(strategy=strategy, activation_checkpointing=checkpointing, sync_batchnorm=True)
    model = prepare_model(method, pcfg, torch.device("cpu"), "fp32")
    groups = method.param_groups(method.named_parameters(), None)
    opt = build_adamw(groups, SimpleNamespace(weight_decay=0.04, betas=(0.9, 0.999)))
    for g in opt.param_groups:
        # the attention key bias has a zero gradient in exact arithmetic (softmax ignores it): with eps 1e-8,
        # Adam would turn its rounding noise (~1e-10, different per process count) into full-size steps
        g["eps"] = 1e-6
    b = GLOBAL_BATCH // world
    losses = []
    for step in range(STEPS):
        ctx = StepContext(step=step, epoch=step // INFO.steps_per_epoch, info=INFO)
        for g in opt.param_groups:
            g["lr"] = 0.0 if step < g["freeze_steps"] else 1e-2 * g["lr_scale"]
        method.before_step(ctx)
        out = model([c[step, rank * b : (rank + 1) * b] for c in _crops()], ctx)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(ctx)
        losses.append(float(dist.all_reduce_sum(out.loss.detach().clone())) / world)
    state = {}
    for k, v in method.state_dict().items():
        state[k] = v.full_tensor() if hasattr(v, "full_tensor") else v.clone()
    return {"losses": losses, "state": state}


def _variants(rank: int, world: int) -> dict:
    return {
        "ddp": dino_steps(rank, world, "ddp"),
        "fsdp": dino_steps(rank, world, "fsdp"),
        "fsdp-ac": dino_steps(rank, world, "fsdp", checkpointing=True),
        "ddp-regnet": dino_steps(rank, world, "ddp", backbone="regnet"),
    }


@pytest.mark.dist
def test_dino_two_processes_equal_one_process(tmp_path):
    single = dino_steps(0, 1)
    assert single["state"]["center"].abs().sum() > 0
    key = "backbone.blocks.0.attn.qkv.weight"  # the teacher lags the student (EMA), but not by much
    gap = (single["state"]["teacher." + key] - single["state"][key]).abs().max()
    assert 0 < gap < 0.1
    regnet = dino_steps(0, 1, backbone="regnet")
    for rank, result in enumerate(spawn(_variants, 2, tmp_path)):
        for name, r in result.items():
            ref = regnet if name.endswith("regnet") else single
            where = f"{name}, rank {rank}"
            assert r["losses"] == pytest.approx(ref["losses"], abs=2e-5), where
            assert set(r["state"]) == set(ref["state"]), where
            for k, v in ref["state"].items():
                torch.testing.assert_close(r["state"][k], v, rtol=1e-4, atol=2e-5, msg=f"{where}: {k}")
