"""Shared by the golden-step tests (``test_<method>_golden.py``): build a method from its paper preset on a
tiny backbone, copy it for the reference, drive openseer's own ``build_trainer`` + ``train_step``, and compare
every parameter and buffer after the steps. The reference's training step itself is written out in each test
file from the reference's source text; only the modules (backbone, heads) are shared, as in
``tests/methods/test_swav_golden.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from openseer.config import OptimConfig, derive, load_config
from openseer.methods import METHODS
from openseer.methods.base import RunInfo
from openseer.models.backbone import build_backbone
from openseer.train import build_trainer, train_step

STEPS = 3
BATCH = 8
# a RegNetY small enough for a step in milliseconds, with batch norm and squeeze-excitation as the real one
TINY_REGNET = [
    "model.regnet.depth=6",
    "model.regnet.w0=8",
    "model.regnet.wa=8.0",
    "model.regnet.wm=2.0",
    "model.regnet.group_size=4",
    "model.channels_last=false",
    "model.zero_init_residual=false",
]
# a ViT-Ti with 4-pixel patches on 16-pixel crops: 16 tokens and a class token
TINY_VIT = [
    "model.backbone=vit_tiny_patch16_224",
    "model.img_size=16",
    "model.patch_size=4",
    "model.channels_last=false",
    "model.drop_path_rate=0.0",
]
# AdamW moves each weight by about lr a step whatever the size of its gradient, so the few weights whose gradient
# is at fp32 rounding level take +-lr steps in any run (a reference in fp32 and in fp64 differ by up to ~2e-4
# there at lr 3e-4): compare AdamW runs' values to 2e-4 and each tensor's update as a whole to 1%
ADAMW_TOLERANCES = {"atol": 2e-4, "update_rtol": 1e-2}
COMMON = [f"train.batch_size={BATCH}", "train.precision=fp32", "optim.warmup_epochs=0"]


def pending(setting: str, reason: str = "") -> pytest.MarkDecorator:
    """xfail (strict) while ``optim.<setting>`` does not exist; once another change adds it, the test must pass."""
    missing = setting not in {f.name for f in dataclasses.fields(OptimConfig)}
    return pytest.mark.xfail(missing, strict=True, reason=reason or f"pending optim.{setting}")


# A warm-up starts at lr 0; the references' optimizers still build their state at that step (Adam's moments and
# step count, LARS/SGD momentum), where openseer (until the optim change that adds optim.clip_mode and
# optim.lars_variant) treats a group at lr 0 as frozen and drops its gradient.
PENDING_WARMUP = pending("clip_mode", "pending: a warm-up's first step (lr 0) builds optimizer state")


@dataclass
class Golden:
    """A method built twice from the same weights: ``model`` for openseer, ``reference`` for the test's step."""

    cfg: Any
    derived: Any
    model: nn.Module
    reference: nn.Module
    initial: dict[str, torch.Tensor]


def build_pair(preset: str, overrides: list[str], steps_per_epoch: int) -> Golden:
    """``preset`` + ``overrides`` (after :data:`COMMON`), a dataset of ``steps_per_epoch`` batches, seed 0."""
    cfg = load_config(preset, COMMON + overrides)
    derived = derive(cfg, dataset_size=steps_per_epoch * BATCH)
    assert derived.steps_per_epoch == steps_per_epoch
    torch.manual_seed(0)
    model = METHODS[cfg.method].build(cfg, build_backbone(cfg.model), RunInfo.of(cfg, derived))
    initial = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    return Golden(cfg, derived, model, copy.deepcopy(model), initial)


def run_openseer(pair: Golden, crops: list[list[torch.Tensor]]) -> list[float]:
    """The training loop's own steps on ``pair.model``: one ``train_step`` per entry of ``crops``."""
    trainer = build_trainer(pair.cfg, pair.model, pair.derived, torch.device("cpu"))
    losses = []
    for step, views in enumerate(crops):
        result = train_step(trainer, [[c.clone() for c in views]], step, step // pair.derived.steps_per_epoch)
        assert result.finite
        losses.append(result.loss)
    return losses


def views(step: int, sizes: list[int]) -> list[torch.Tensor]:
    """Fixed crops of one step: one (BATCH, 3, s, s) tensor per size."""
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(BATCH, 3, s, s, generator=g) for s in sizes]


def cosine_decay(step: int, max_steps: int, initial: float) -> float:
    """TF1's ``cosine_decay`` as BYOL's ``schedules._cosine_decay`` and MoCo v3's ``adjust_*`` write it."""
    step = min(step, max_steps)
    return initial * 0.5 * (1 + math.cos(math.pi * step / max_steps))


def without_key_bias(name: str, value: torch.Tensor) -> torch.Tensor:
    """A ViT's ``attn.qkv.bias`` without its key third (other tensors whole), for :func:`assert_states_equal`.

    A key bias adds one number to all the logits of a query, which the softmax cancels: its gradient is fp32
    rounding noise (~1e-8), which AdamW scales up to steps of +-lr, so that a reference in fp32 and the same in
    fp64 disagree on it as much as any two runs do.
    """
    if not name.endswith("attn.qkv.bias"):
        return value
    q, _, v = value.chunk(3)
    return torch.cat([q, v])


def assert_losses_equal(losses: list[float], ref_losses: list[float]) -> None:
    assert len(losses) == len(ref_losses) == STEPS
    for step, (loss, ref) in enumerate(zip(losses, ref_losses, strict=True)):
        assert math.isclose(loss, ref, rel_tol=1e-5, abs_tol=1e-6), (step, loss, ref)


def assert_states_equal(
    pair: Golden,
    unmoved: tuple[str, ...] = (),
    part: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    update_rtol: float = 1e-3,
) -> None:
    """Every floating tensor of the state dict equal after the steps, and its update too.

    ``unmoved``: name prefixes of tensors that also stay put in the reference (frozen or not yet trained).
    Everything else must have moved in the reference, so that a step that skipped it would fail.
    ``part(name, tensor)``: the part of each tensor to compare (default: all of it). ``rtol``/``atol``: of the
    values; ``update_rtol``: of each tensor's update (norm of the difference / norm of the reference's update).
    """
    ref_state, state = _tensors(pair.reference), _tensors(pair.model)
    assert ref_state.keys() == state.keys()
    for name, value in state.items():
        if part is not None:
            value = part(name, value)
            ref_state[name], pair.initial[name] = part(name, ref_state[name]), part(name, pair.initial[name])
            if value.numel() == 0:
                continue
        moved = ref_state[name] - pair.initial[name]
        if name.startswith(unmoved):  # an EMA of two equal frozen tensors may round by an ulp
            assert moved.abs().max() <= 1e-6 * value.abs().max(), f"{name} moved in the reference"
        else:
            assert moved.abs().max() > 0, f"{name} did not change in the reference"
        torch.testing.assert_close(value, ref_state[name], rtol=rtol, atol=atol, msg=f"{name} after {STEPS} steps")
        # the update itself agrees, not only the (much larger) values; an update far below the value's fp32
        # rounding (an EMA target's ~1e-5 of its weight) or at rounding level itself (the running mean of a
        # batch norm after a zero-mean input) is covered by the comparison of values above
        if moved.norm() > 1e-4 * pair.initial[name].norm() and moved.abs().max() > 1e-6:
            diff = ((value - pair.initial[name]) - moved).norm() / moved.norm()
            assert diff < update_rtol, f"{name}: update differs from the reference's by {float(diff):.2e} (relative)"


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in model.state_dict().items()
        if torch.is_tensor(v) and v.is_floating_point() and not k.endswith("num_batches_tracked")
    }
