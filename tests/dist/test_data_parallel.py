"""DDP and FSDP2 over 2 gloo processes equal one process on the concatenated batch."""

from __future__ import annotations

import pytest
import torch

from openseer import dist
from openseer.config import load_config
from openseer.methods import METHODS
from openseer.models.backbone import build_backbone
from openseer.parallel import grad_norm, prepare_model
from openseer.train import _build_optimizer
from tests.helpers import TINY_OVERRIDES

# a 36k-parameter RegNetY (4 stages, 1+1+1+3 blocks) keeps 2-process runs within seconds
TINY_REGNET = [
    "model.regnet_depth=6",
    "model.regnet_w0=8",
    "model.regnet_wa=10.0",
    "model.regnet_wm=1.8",
    "model.regnet_group_size=8",
]

GLOBAL_BATCH, STEPS = 8, 2


def _cfg(*extra: str):
    return load_config(
        "demo",
        [
            *TINY_OVERRIDES,
            *TINY_REGNET,
            "swav.queue_length=16",
            "swav.queue_start_epoch=0",
            "swav.freeze_prototypes_steps=0",
            "train.precision=fp32",
            "parallel.sync_batchnorm=true",
            *extra,
        ],
    )


def _crops() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sizes = [24, 24, 16, 16]
    return [torch.randn(STEPS, GLOBAL_BATCH, 3, s, s, generator=g) for s in sizes]


def train_steps(rank: int, world: int, extra: tuple[str, ...] = ()) -> dict:
    """A few LARS steps of tiny SwAV on this rank's slice of a fixed global batch; losses and final params."""
    cfg = _cfg(*extra)
    torch.manual_seed(0)
    method = METHODS["swav"].build(cfg, build_backbone(cfg.model), GLOBAL_BATCH)
    model = prepare_model(method, cfg.parallel, torch.device("cpu"), cfg.train.precision)
    opt = _build_optimizer(cfg, method, method.param_group_prefixes())
    for group in opt.param_groups:
        group["lr"] = 0.1
    b = GLOBAL_BATCH // world
    losses = []
    for step in range(STEPS):
        crops = [c[step, rank * b : (rank + 1) * b] for c in _crops()]
        method.before_step()
        loss = model(crops, epoch=0)
        loss.backward()
        norm = grad_norm(method.parameters())
        opt.step()
        opt.zero_grad(set_to_none=True)
        global_loss = dist.all_reduce_sum(loss.detach().clone()) / world
        losses.append((float(global_loss), float(norm)))
    params = {}
    for k, v in method.state_dict().items():
        if isinstance(v, torch.Tensor):
            params[k] = v.full_tensor() if hasattr(v, "full_tensor") else v.clone()
    return {"losses": losses, "params": params}


VARIANTS = {
    "ddp": ("parallel.strategy=ddp",),
    "fsdp-block": ("parallel.strategy=fsdp",),
    "fsdp-offload": ("parallel.strategy=fsdp", "parallel.fsdp_cpu_offload=true"),
    "fsdp-stage-ac": (
        "parallel.strategy=fsdp",
        "parallel.fsdp_unit=stage",
        "parallel.activation_checkpointing=true",
        "parallel.checkpoint_every=2",
    ),
}


def run_variants(rank: int, world: int) -> dict:
    return {name: train_steps(rank, world, extra) for name, extra in VARIANTS.items()}


@pytest.mark.dist
def test_ddp_and_fsdp_on_two_processes_equal_one_process_on_concatenated_batch(two_process_results):
    single = train_steps(0, 1)
    for rank, result in enumerate(two_process_results):
        for name, r in result["variants"].items():
            where = f"{name}, rank {rank}"
            assert [x[0] for x in r["losses"]] == pytest.approx([x[0] for x in single["losses"]], abs=2e-5), (
                where
            )
            assert [x[1] for x in r["losses"]] == pytest.approx([x[1] for x in single["losses"]], rel=1e-4), (
                where
            )
            for k, v in single["params"].items():
                torch.testing.assert_close(r["params"][k], v, rtol=1e-4, atol=2e-5, msg=f"{where}: {k}")
