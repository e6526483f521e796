"""DINO on 2 gloo processes (DDP, FSDP2) equals 1 process on the concatenated batch, through the loop's
train_step: per-step losses, the centre, student and teacher parameters (and batch-norm statistics) after a
few AdamW steps with EMA updates and the last layer frozen for the first epoch."""

from __future__ import annotations

import pytest
import torch
from timm.models.regnet import RegNet, RegNetCfg
from timm.models.vision_transformer import VisionTransformer

from openseer.config import derive, load_config
from openseer.methods.base import RunInfo
from openseer.methods.registry import get_method
from openseer.train import build_trainer, train_step
from tests.dist.common import spawn
from tests.helpers import DINO_PAPER_SCHEDULE

GLOBAL_BATCH, STEPS = 8, 3


def _crops() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(STEPS, GLOBAL_BATCH, 3, s, s, generator=g) for s in (16, 16, 8, 8)]


def _backbone(kind: str) -> torch.nn.Module:
    if kind == "regnet":  # batch norm in student and teacher, synchronised over the processes
        return RegNet(RegNetCfg(depth=6, w0=8, wa=10.0, wm=1.8, group_size=8), num_classes=0)
    return VisionTransformer(
        img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=0, dynamic_img_size=True
    )


def dino_steps(rank: int, world: int, extra: tuple[str, ...] = (), backbone: str = "vit") -> dict:
    cfg = load_config(
        "dino-cifar10",
        [
            "aug.global_size=16",
            "aug.local_size=8",
            "aug.local_crops=2",
            "model.patch_size=4",
            "dino.out_dim=32",
            "dino.hidden_dim=24",
            "dino.bottleneck_dim=8",
            *DINO_PAPER_SCHEDULE,
            f"train.batch_size={GLOBAL_BATCH // world}",
            "train.epochs=2",
            "train.precision=fp32",
            "optim.warmup_epochs=0",
            "optim.base_lr=0.5",
            "parallel.sync_batchnorm=true",
            *extra,
        ],
    )
    derived = derive(cfg, 2 * GLOBAL_BATCH, world)  # 2 steps per epoch
    torch.manual_seed(0)
    method = get_method("dino").build(cfg, _backbone(backbone), RunInfo.of(cfg, derived))
    trainer = build_trainer(cfg, method, derived, torch.device("cpu"))
    for g in trainer.optimizer.param_groups:
        # the attention key bias has a zero gradient in exact arithmetic (softmax ignores it): with eps 1e-8,
        # Adam would turn its rounding noise (~1e-10, different per process count) into full-size steps
        g["eps"] = 1e-6
    b = GLOBAL_BATCH // world
    losses = []
    for step in range(STEPS):
        crops = [c[step, rank * b : (rank + 1) * b] for c in _crops()]
        result = train_step(trainer, [crops], step=step, epoch=step // derived.steps_per_epoch)
        losses.append(result.loss)
    state = {}
    for k, v in method.state_dict().items():
        state[k] = v.full_tensor() if hasattr(v, "full_tensor") else v.clone()
    return {"losses": losses, "state": state}


def _variants(rank: int, world: int) -> dict:
    return {
        "ddp": dino_steps(rank, world, ("parallel.strategy=ddp",)),
        "fsdp": dino_steps(rank, world, ("parallel.strategy=fsdp",)),
        "fsdp-ac": dino_steps(rank, world, ("parallel.strategy=fsdp", "parallel.activation_checkpointing=true")),
        "ddp-regnet": dino_steps(rank, world, ("parallel.strategy=ddp",), backbone="regnet"),
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
