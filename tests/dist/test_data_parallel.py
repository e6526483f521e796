"""DDP and FSDP2 over 2 gloo processes equal one process on the concatenated batch."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import timm
import torch

from openseer import dist
from openseer.config import load_config
from openseer.methods import METHODS
from openseer.models.backbone import build_backbone
from openseer.parallel import grad_norm, no_gradient_sync, prepare_model
from openseer.train import build_optimizer
from tests.helpers import TINY_OVERRIDES, run_info, step_ctx

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


def train_steps(rank: int, world: int, extra: tuple[str, ...] = (), accumulate: int = 1) -> dict:
    """A few LARS steps of tiny SwAV on this rank's slice of a fixed global batch; losses and final params.

    With ``accumulate`` > 1 the slice runs as that many micro-batches, as the training loop runs them (joint
    codes first, then one backward each, the gradient sync with the last).
    """
    cfg = _cfg(*extra)
    torch.manual_seed(0)
    backbone = build_backbone(cfg.model)
    if not cfg.swav.head_batch_norm:  # the accumulation checks: batch norm with fixed statistics
        backbone = timm.layers.freeze_batch_norm_2d(backbone)
    info = run_info(GLOBAL_BATCH, world, accumulate)
    method = METHODS["swav"].build(cfg, backbone, info)
    model = prepare_model(method, cfg.parallel, torch.device("cpu"), cfg.train.precision)
    opt, _ = build_optimizer(cfg, method)
    ctx = step_ctx(0, info)
    for group in opt.param_groups:
        group["lr"] = 0.1
    b = GLOBAL_BATCH // world
    m = b // accumulate
    losses = []
    for step in range(STEPS):
        crops = [c[step, rank * b : (rank + 1) * b] for c in _crops()]
        method.before_step(ctx)
        if accumulate == 1:
            loss = model(crops, ctx).loss
            loss.backward()
        else:
            micro = [[c[j * m : (j + 1) * m] for c in crops] for j in range(accumulate)]
            with torch.no_grad():
                codes = model(micro, ctx, mode="targets")
            loss = torch.zeros(())
            for j in range(accumulate):
                with nullcontext() if j == accumulate - 1 else no_gradient_sync(model):
                    part = model(micro[j], ctx, codes[j]).loss / accumulate
                    part.backward()
                loss = loss + part.detach()
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


# gradient accumulation: 2 processes x 2 micro-batches of 2 = one process on the batch of 8 (batch norm frozen:
# its statistics are per micro-batch by design, see docs/distributed.md)
FROZEN_BN = ("swav.head_batch_norm=false",)
ACCUMULATION_VARIANTS = {
    "ddp-accumulate": ("parallel.strategy=ddp", *FROZEN_BN),
    "fsdp-accumulate": ("parallel.strategy=fsdp", *FROZEN_BN),
}


def run_variants(rank: int, world: int) -> dict:
    results = {name: train_steps(rank, world, extra) for name, extra in VARIANTS.items()}
    for name, extra in ACCUMULATION_VARIANTS.items():
        results[name] = train_steps(rank, world, extra, accumulate=2)
    return results


@pytest.mark.dist
def test_ddp_and_fsdp_on_two_processes_equal_one_process_on_concatenated_batch(two_process_results):
    single = train_steps(0, 1)
    single_frozen_bn = train_steps(0, 1, FROZEN_BN)
    assert single_frozen_bn["losses"][1][0] != pytest.approx(single["losses"][1][0], abs=1e-3)
    for rank, result in enumerate(two_process_results):
        assert set(result["variants"]) == set(VARIANTS) | set(ACCUMULATION_VARIANTS)
        for name, r in result["variants"].items():
            where = f"{name}, rank {rank}"
            ref = single_frozen_bn if name in ACCUMULATION_VARIANTS else single
            assert [x[0] for x in r["losses"]] == pytest.approx([x[0] for x in ref["losses"]], abs=2e-5), (
                where
            )
            assert [x[1] for x in r["losses"]] == pytest.approx([x[1] for x in ref["losses"]], rel=1e-4), (
                where
            )
            for k, v in ref["params"].items():
                torch.testing.assert_close(r["params"][k], v, rtol=1e-4, atol=2e-5, msg=f"{where}: {k}")
