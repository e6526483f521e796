"""Single-process checks of openseer.parallel: activation checkpointing, norm conversion, accumulation."""

from __future__ import annotations

import copy
import random

import pytest
import timm
import torch

from openseer.config import derive, load_config
from openseer.info import saved_activation_bytes
from openseer.methods import METHODS
from openseer.models.backbone import build_backbone
from openseer.norm import convert_batchnorm
from openseer.ops import cosine_schedule
from openseer.parallel import apply_activation_checkpointing, find_blocks
from openseer.train import build_optimizer, pretrain
from tests.dist.test_data_parallel import TINY_REGNET
from tests.helpers import TINY_OVERRIDES, run_info, step_ctx, write_images


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
    # 0.57 for this tiny RegNet at 24 px
    assert saved_activation_bytes(ckpt, x) < 0.7 * saved_activation_bytes(plain, x)


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
            "train.max_steps=3",
            "optim.warmup_epochs=0",
            "swav.freeze_prototypes_steps=0",
            "swav.head_batch_norm=false",
            "swav.queue_length=16",  # full after 2 steps of 8: the third step's codes use it
            "swav.queue_start_epoch=0",
            *extra,
        ],
    )


def _frozen_bn_backbone(cfg):
    """Batch norm with fixed statistics: the one layer that legitimately differs between a micro-batch and
    the whole batch (as it differs between one GPU's batch and the global batch without sync BN)."""
    return timm.layers.freeze_batch_norm_2d(build_backbone(cfg))


def test_gradient_accumulation_equals_one_k_times_larger_batch(tmp_path, monkeypatch):
    """3 loop steps with 2 micro-batches of 4 = 3 steps on the concatenated batch of 8: the same losses, queue
    and parameters (SwAV's codes come from Sinkhorn over the whole accumulated batch plus the queue)."""
    import json

    from openseer.checkpoint import load_checkpoint
    from openseer.data.pipeline import build_pretrain_data
    from openseer.train import setup

    monkeypatch.setattr(setup, "build_backbone", _frozen_bn_backbone)
    data = write_images(tmp_path / "imgs", 16)
    cfg = _accum_cfg(data, "train.batch_size=4", "train.accumulate_steps=2")
    pretrain(cfg, tmp_path / "run")
    got = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    got_losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").open()]

    derived = derive(cfg, 16, 1)
    assert derived.global_batch == 8  # lr and schedule as for a batch of 8
    assert derived.peak_lr == derive(_accum_cfg(data, "train.batch_size=8"), 16, 1).peak_lr
    sampler, loader, _ = build_pretrain_data(cfg, 0, 1, torch.device("cpu"))
    big_batches = []
    for epoch in range(2):  # 2 steps per epoch
        sampler.set_epoch(epoch, 0)
        micro = list(loader)
        for j in range(0, len(micro), 2):
            big_batches.append([torch.cat(cs) for cs in zip(micro[j].crops, micro[j + 1].crops, strict=True)])
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    method = METHODS["swav"].build(cfg, _frozen_bn_backbone(cfg.model), run_info(8))
    opt, _ = build_optimizer(cfg, method)
    lrs = cosine_schedule(derived.peak_lr, derived.final_lr, derived.total_steps, 0, 0.0)
    losses = []
    for step, crops in enumerate(big_batches[:3]):
        for g in opt.param_groups:
            g["lr"] = float(lrs[step])
        method.before_step(step_ctx(step // 2))
        loss = method(crops, step_ctx(step // 2)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert method.queue_filled == 16
    assert got_losses == pytest.approx(losses, abs=1e-5)
    torch.testing.assert_close(got["queue"]["queue"], method.queue)
    for k, v in method.state_dict().items():
        if torch.is_tensor(v) and v.is_floating_point():
            torch.testing.assert_close(got["model"][k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_per_micro_batch_codes_differ_from_the_accumulated_batch_codes():
    """The check above can fail: Sinkhorn over each micro-batch alone gives other codes than over both."""
    from openseer.methods.swav import SwAV, SwAVConfig

    torch.manual_seed(0)
    cfg = SwAVConfig(num_prototypes=6, output_dim=8, hidden_dims=[16], crops_for_assign=[0], head_batch_norm=False)
    model = SwAV(timm.layers.freeze_batch_norm_2d(build_backbone(_accum_cfg("x").model)), cfg)
    micro = [[torch.randn(4, 3, 24, 24), torch.randn(4, 3, 16, 16)] for _ in range(2)]
    joint = model(micro, step_ctx(), mode="targets")
    alone = [model.assign(*_embed_scores(model, m), 4, 0)[0] for m in micro]
    assert not torch.allclose(joint[0][0], alone[0], atol=1e-3)
    # ...and the joint codes are those of the concatenated batch
    big = [torch.cat(cs) for cs in zip(*micro, strict=True)]
    torch.testing.assert_close(torch.cat([joint[0][0], joint[1][0]]), model.assign(*_embed_scores(model, big), 8, 0)[0])


def _embed_scores(model, crops):
    with torch.no_grad():
        z = model.embed(crops)
        return z, model.prototypes(z)


def _dino_clip_gradients(model: torch.nn.Module, clip: float) -> None:
    """facebookresearch/dino utils.clip_gradients, as written there: each parameter on its own."""
    for p in model.parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


def _model_with_grads(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    x = torch.randn(16, 5)
    model(x).pow(2).sum().backward()  # gradient norms 6-16
    with torch.no_grad():
        model[0].bias.grad.mul_(0.1)  # and one below the clip
    return model


def test_per_param_clipping_equals_dino_clip_gradients_and_differs_from_global():
    from openseer.parallel import clip_grads, clip_grads_per_param, grad_norm

    clip = 3.0
    ref, ours, glob = _model_with_grads(), _model_with_grads(), _model_with_grads()
    norms = [float(p.grad.norm()) for p in ref.parameters()]
    assert min(norms) < clip < max(norms)  # both branches of the reference are exercised
    _dino_clip_gradients(ref, clip)
    clip_grads_per_param(ours.parameters(), clip)
    for a, b in zip(ref.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=0)
    clip_grads(glob.parameters(), clip, grad_norm(glob.parameters()))
    assert not all(torch.allclose(a.grad, b.grad) for a, b in zip(ref.parameters(), glob.parameters(), strict=True))


def test_train_step_clips_as_optim_clip_mode_says():
    from types import SimpleNamespace

    from openseer.train.step import _update

    for mode in ("per_param", "global"):
        model = _model_with_grads()
        expected = _model_with_grads()
        if mode == "per_param":
            _dino_clip_gradients(expected, 3.0)
        else:
            torch.nn.utils.clip_grad_norm_(expected.parameters(), 3.0)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        trainer = SimpleNamespace(
            scaler=torch.amp.GradScaler("cpu", enabled=False),
            optimizer=opt,
            method=model,
            clip_grad=3.0,
            clip_mode=mode,
        )
        before = [p.detach().clone() for p in model.parameters()]
        assert _update(trainer)
        for p0, p, e in zip(before, model.parameters(), expected.parameters(), strict=True):
            torch.testing.assert_close(p0 - p.detach(), e.grad, rtol=1e-5, atol=1e-7, msg=mode)
