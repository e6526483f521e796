"""FSDP2 shards every declared tower: BYOL's target and MoCo v3's momentum backbone block by block, like the
online backbone (issue 21 item 8), and the EMA update then runs shard by shard."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.fsdp import FSDPModule

from openseer.config import load_config
from openseer.methods import METHODS
from openseer.models.backbone import build_backbone
from openseer.parallel import find_blocks, shard_model
from tests.dist.common import spawn
from tests.dist.test_data_parallel import TINY_REGNET
from tests.helpers import run_info, step_ctx

pytestmark = pytest.mark.dist


def sharded_towers(rank: int, world: int) -> dict:
    out = {}
    for name, preset in (("byol", "byol-cifar10"), ("mocov3", "mocov3-cifar10")):
        cfg = load_config(preset, [*TINY_REGNET, f"{name}.hidden_dim=16", f"{name}.output_dim=8"])
        torch.manual_seed(0)
        method = METHODS[name].build(cfg, build_backbone(cfg.model), run_info(8, world))
        with torch.no_grad():  # move the online weights away from the copies so the EMA update shows
            for p in method.backbone.parameters():
                p.add_(0.5)
        shard_model(method, torch.device("cpu"), "block")
        units = {}
        for tower, module in method.tower_modules():
            parts = [b for s in find_blocks(module) for b in s] if tower.role == "backbone" else [module]
            units[tower.path] = (len(parts), all(isinstance(b, FSDPModule) for b in parts))
        target, online = method.ema_pairs()[0]
        before = {n: p.full_tensor().double() for n, p in target.named_parameters()}
        theta = {n: p.full_tensor().double() for n, p in online.named_parameters()}
        ctx = step_ctx(0, run_info(8, world))
        (method.after_step if name == "byol" else method.before_step)(ctx)
        m = method.tau(0) if name == "byol" else method.momentum(0)
        err = max(
            (p.full_tensor().double() - (m * before[n] + (1 - m) * theta[n])).abs().max().item()
            for n, p in target.named_parameters()
        )
        out[name] = {"units": units, "ema_error": err, "momentum": m}
    return out


def test_fsdp_shards_every_tower_and_updates_the_copies_shard_by_shard(tmp_path):
    for result in spawn(sharded_towers, 2, tmp_path):
        for name, r in result.items():
            assert r["momentum"] < 1.0
            for path, (count, sharded) in r["units"].items():
                assert count > 0 and sharded, (name, path)
            prefix = "target" if name == "byol" else "momentum"
            assert {p for p in r["units"] if p.startswith(prefix)} == {f"{prefix}_backbone", f"{prefix}_projector"}
            assert r["ema_error"] < 1e-6, name
