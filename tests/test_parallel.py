"""Single-process checks of openseer.parallel: activation checkpointing, norm conversion, accumulation."""

from __future__ import annotations

import copy
import random

import pytest
import timm
import torch

from openseer.config import derive, load_config
from openseer.info import _saved_bytes
from openseer.methods import METHODS
from openseer.models.backbone import build_backbone
from openseer.norm import convert_batchnorm
from openseer.ops import cosine_schedule
from openseer.parallel import apply_activation_checkpointing, find_blocks
from openseer.train import _build_optimizer, pretrain
from tests.dist.test_data_parallel import TINY_REGNET
from tests.helpers import TINY_OVERRIDES, write_images


def test_find_blocks_for_regnet_and_resnet():
    assert [len(s) for s in find_blocks(timm.create_model("regnetx_002", num_classes=0))] == [1, 1, 4, 7]
    assert [len(s) for s in find_blocks(timm.create_model("resnet18", num_classes=0))] == [2, 2, 2, 2]


def _tiny_regnet() -> torch.nn.Module:
    return build_backbone(load_config("demo", [*TINY_REGNET, "model.zero_init_residual=false"]).model)


def test_activation_checkpointing_changes_memory_not_gradients():
    torch.manual_seed(0)
    plain = _tiny_regnet()
    ckpt = copy.deepcopy(plain)
    assert apply_activation_checkpointing(ckpt) == 6
    x = torch.randn(4, 3, 24, 24)
    for m in (plain, ckpt):
        (m(x) ** 2).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)
    # running statistics are updated once, not again during recomputation
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, msg=name)
    assert plain.state_dict().keys() == ckpt.state_dict().keys()
    assert _saved_bytes(ckpt, x) < 0.7 * _saved_bytes(plain, x)  # 0.57 for this tiny RegNet at 24 px


def test_checkpoint_every_k_and_per_stage():
    m = timm.create_model("regnetx_002", num_classes=0)  # blocks per stage: 1, 1, 4, 7
    assert apply_activation_checkpointing(copy.deepcopy(m), every=2) == 1 + 1 + 2 + 4
    assert apply_activation_checkpointing(copy.deepcopy(m), stages=[3, 4]) == 11
    with pytest.raises(ValueError, match="stages 1..4"):
        apply_activation_checkpointing(copy.deepcopy(m), stages=[5])


def test_batchnorm_conversion_keeps_state_dict_and_single_process_output():
    torch.manual_seed(0)
    m = _tiny_regnet()
    ref = copy.deepcopy(m)
    assert convert_batchnorm(m) == sum(isinstance(x, torch.nn.BatchNorm2d) for x in ref.modules())
    assert m.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(4, 3, 24, 24)
    torch.testing.assert_close(m(x), ref(x))  # one process: plain batch norm


def _accum_cfg(data, *extra):
    return load_config(
        "demo",
        [
            *TINY_OVERRIDES,
            *TINY_REGNET,
            f"data.path={data}",
            "train.precision=fp32",
            "train.max_steps=1",
            "optim.warmup_epochs=0",
            "swav.freeze_prototypes_steps=0",
            "swav.queue_length=0",
            *extra,
        ],
    )


def test_gradient_accumulation_equals_the_mean_of_micro_batch_gradients(tmp_path):
    """The loop's update with k micro-batches is the optimizer step on the mean of their gradients, with the
    lr of the k-times larger batch. (With SwAV that is not the big-batch update itself: codes and batch-norm
    statistics are per micro-batch - see docs/distributed.md.)"""
    from openseer.data.pipeline import build_pretrain_data

    data = write_images(tmp_path / "imgs", 16)
    cfg = _accum_cfg(data, "train.batch_size=4", "train.accumulate_steps=2")
    pretrain(cfg, tmp_path / "run")
    from openseer.checkpoint import load_checkpoint

    got = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]

    derived = derive(cfg, 16, 1)
    assert derived.global_batch == 8  # lr and schedule as for a batch of 8
    assert derived.peak_lr == derive(_accum_cfg(data, "train.batch_size=8"), 16, 1).peak_lr
    sampler, loader, _ = build_pretrain_data(cfg, 0, 1, torch.device("cpu"))
    sampler.set_epoch(0, 0)
    micro = [b for _, b in zip(range(2), loader, strict=False)]
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    method = METHODS["swav"].build(cfg, build_backbone(cfg.model), 8)
    opt = _build_optimizer(cfg, method, method.param_group_prefixes())
    lr = float(cosine_schedule(derived.peak_lr, derived.final_lr, derived.total_steps, 0, 0.0)[0])
    for g in opt.param_groups:
        g["lr"] = lr
    method.before_step()
    grads = []
    for b in micro:
        method.zero_grad()
        method(b.crops).backward()
        grads.append([p.grad.clone() for p in method.parameters()])
    for p, g0, g1 in zip(method.parameters(), *grads, strict=True):
        p.grad = (g0 + g1) / 2
    opt.step()
    for k, v in method.state_dict().items():
        if torch.is_tensor(v) and v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-6, msg=k)
