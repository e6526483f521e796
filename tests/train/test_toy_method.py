"""A method defined here, outside the package, trains through `openseer pretrain` and resumes: the contract
(openseer.methods.base) and the registry are all a new method needs. Also: one train_step on its own.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from openseer.cli import main
from openseer.config import derive, load_config
from openseer.methods.base import Method, ParamGroup, RunInfo, StepContext, StepOutput, Tower, split_groups
from openseer.methods.registry import METHODS, MethodEntry, register_method
from openseer.models.backbone import feature_dim
from openseer.train import build_trainer, train_step
from tests.helpers import write_images

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ToyConfig:
    dim: int = 8  # width of the projection
    head_freeze_steps: int = 0  # the head's group is frozen for this many steps


class TwoViewCosine(Method):
    """Predict one view's projection from the other's: loss = -cos(h(x0), h(x1)) (no collapse guard: a toy)."""

    name = "toy"
    exact_accumulation = True  # per-sample loss, no batch-coupled term
    # the towers --init, FSDP wrapping, `openseer info` and export find (no attribute names are guessed)
    towers = (Tower("backbone"), Tower("head", "head"))

    def __init__(self, backbone: nn.Module, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.head = nn.Linear(feature_dim(backbone), cfg.dim)

    def param_groups(self, named, optim) -> list[ParamGroup]:
        special = {"head.": {"name": "head", "freeze_steps": self.cfg.head_freeze_steps, "lr_scale": 2.0}}
        return split_groups(named, optim.exclude_bias_and_norm, special)

    def compute_loss(self, crops, ctx: StepContext, targets=None) -> StepOutput:
        z0, z1 = (F.normalize(self.head(self.backbone(c)), dim=1) for c in crops[:2])
        cos = (z0 * z1).sum(dim=1).mean()
        return StepOutput(-cos, {"cosine": cos.detach()})

    def trivial_loss(self) -> float:
        return 0.0  # random embeddings: cosine 0


def build(cfg, backbone: nn.Module, info: RunInfo) -> TwoViewCosine:
    return TwoViewCosine(backbone, cfg.toy)


ENTRY = MethodEntry("toy", ToyConfig, build, None, "a two-view cosine toy (tests only)")
if os.environ.get("OPENSEER_METHODS") == __name__:  # imported as a plugin by `openseer` in a fresh process
    register_method(ENTRY)


@pytest.fixture(autouse=True)
def toy_registered():
    """Registered for this file's tests only, so that other tests see the built-in methods alone."""
    register_method(ENTRY)
    yield
    METHODS.pop("toy", None)


PRESET = """# toy: two-view cosine on a 36k-parameter RegNet
method: toy
toy: {dim: 8}
model: {regnet_depth: 6, regnet_w0: 8, regnet_wa: 10.0, regnet_wm: 1.8, regnet_group_size: 8, channels_last: false}
aug: {global_size: 16, local_crops: 0, blur_prob: 0.0}
train: {batch_size: 4, epochs: 2, log_every: 1, precision: fp32}
optim: {name: sgd, base_lr: 2.0, warmup_epochs: 0, final_lr_ratio: 1.0}
data: {num_workers: 0}
"""


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`openseer ...` in a fresh process that knows the toy method only through OPENSEER_METHODS."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENSEER_METHODS": __name__}
    cmd = [sys.executable, "-m", "openseer.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_a_method_from_outside_trains_through_the_cli_and_resumes(tmp_path):
    data = write_images(tmp_path / "imgs", 12)  # 3 steps per epoch
    preset = tmp_path / "toy.yaml"
    preset.write_text(PRESET)
    # uninterrupted, in this process (the registry already holds the toy method)
    assert main(["pretrain", str(preset), "--data", str(data), "--out", str(tmp_path / "full")]) == 0
    full = _losses(tmp_path / "full")
    assert len(full) == 6 and full[-1] < full[0]  # it learns (collapses the views together)
    metrics = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["cosine"] == pytest.approx(-metrics["loss"])  # the method's scalar is logged
    # interrupted after the first epoch, then resumed: a fresh process each time
    first = _cli("pretrain", str(preset), "--data", str(data), "--out", str(tmp_path / "part"), "--max-steps", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    again = _cli("pretrain", str(preset), "--data", str(data), "--out", str(tmp_path / "part"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr
    assert _losses(tmp_path / "part") == pytest.approx(full, abs=1e-6)
    saved = yaml_config(tmp_path / "part")
    assert saved["method"] == "toy" and saved["toy"] == {"dim": 8, "head_freeze_steps": 0}
    assert "swav" not in saved  # only the active method's section (and changed ones) is written


def yaml_config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


class _Flat(nn.Module):
    """A linear backbone on 4x4 images: forward_features-free, ``num_features`` as timm models have."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(48, 6)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_train_step_alone_matches_a_plain_sgd_step_with_group_tags():
    cfg = load_config(
        None,
        [
            "method=toy",
            "toy.head_freeze_steps=1",
            "optim.name=sgd",
            "optim.base_lr=25.6",  # peak lr = 25.6 x 8 / 256 = 0.8
            "optim.warmup_epochs=0",
            "optim.final_lr_ratio=1.0",
            "optim.weight_decay=0.1",
            "optim.weight_decay_end=0.3",
            "train.batch_size=4",
            "train.accumulate_steps=2",
            "train.max_steps=2",
            "train.precision=fp32",
            "model.channels_last=false",
        ],
    )
    derived = derive(cfg, 16, 1)  # 2 steps
    torch.manual_seed(0)
    method = TwoViewCosine(_Flat(), cfg.toy)
    reference = copy.deepcopy(method)
    trainer = build_trainer(cfg, method, derived, torch.device("cpu"))
    crops = [torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)]
    micro = [[c[:4] for c in crops], [c[4:] for c in crops]]

    result = train_step(trainer, micro, step=0, epoch=0)

    # reference: the loss of the whole batch (two equal micro-batches), one plain SGD step (first momentum
    # step: buf = g + wd p) at lr 0.8 for the backbone; the head's group is frozen at step 0: no change, no
    # momentum state; biases are excluded from weight decay
    loss = reference.compute_loss(crops, None).loss
    loss.backward()
    assert result.finite and result.loss == pytest.approx(loss.item(), abs=1e-6)
    assert result.lr == pytest.approx(0.8) and result.wd == pytest.approx(0.1)
    assert result.scalars["cosine"] == pytest.approx(-loss.item(), abs=1e-6)
    with torch.no_grad():
        w, b = reference.backbone.fc.weight, reference.backbone.fc.bias
        torch.testing.assert_close(method.backbone.fc.weight, w - 0.8 * (w.grad + 0.1 * w))
        torch.testing.assert_close(method.backbone.fc.bias, b - 0.8 * b.grad)
        torch.testing.assert_close(method.head.weight, reference.head.weight, rtol=0, atol=0)
    assert all(not trainer.optimizer.state[p] for p in method.head.parameters())
    # the next step: the head moves at 2 x lr (lr_scale); weight decay follows the cosine from 0.1 towards
    # 0.3 (dino's cosine_scheduler): 0.3 + 0.5 (0.1 - 0.3) (1 + cos(pi / 2)) = 0.2
    head_before = method.head.weight.detach().clone()
    result = train_step(trainer, micro, step=1, epoch=0)
    assert result.wd == pytest.approx(0.2) and not torch.equal(method.head.weight, head_before)
    assert [g["lr"] for g in trainer.optimizer.param_groups if g["name"] == "head"] == [pytest.approx(1.6)]


class TwoViewCosineWithTarget(TwoViewCosine):
    """The toy with an EMA copy of its head, built with another width: its declaration does not fit."""

    towers = (*TwoViewCosine.towers, Tower("target_head", "head", ema_of="head"))

    def __init__(self, backbone: nn.Module, cfg: ToyConfig):
        super().__init__(backbone, cfg)
        self.target_head = nn.Linear(feature_dim(backbone), cfg.dim + 1).requires_grad_(False)


def test_an_ema_pair_that_does_not_fit_stops_pretrain_with_one_line(tmp_path, capsys):
    entry = MethodEntry("toy", ToyConfig, lambda cfg, backbone, info: TwoViewCosineWithTarget(backbone, cfg.toy))
    register_method(entry)
    preset = tmp_path / "toy.yaml"
    preset.write_text(PRESET)
    data = write_images(tmp_path / "imgs", 4)
    assert main(["pretrain", str(preset), "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "EMA pair 'target_head' <- 'head' differs at parameter 'bias': [9] vs [8]" in err[0]
    backbone = nn.Flatten()
    backbone.num_features = 12
    TwoViewCosine(backbone, ToyConfig()).check_towers()  # the toy's own declaration fits
