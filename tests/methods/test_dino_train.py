"""DINO through the training loop and `openseer pretrain`: metrics, the exported teacher, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from openseer.checkpoint import load_backbone, load_checkpoint
from openseer.cli import main
from openseer.config import load_config
from openseer.train import pretrain
from tests.helpers import DINO_PAPER_SCHEDULE, write_images

# a 255k-parameter timm ViT (6 blocks, width 64) on 16 px crops with 4 px patches: seconds per run
DINO_TINY = [
    "model.backbone=test_vit",
    "model.img_size=16",
    "model.patch_size=4",
    "aug.global_size=16",
    "aug.local_crops=2",
    "aug.local_size=8",
    "dino.out_dim=64",
    "dino.hidden_dim=32",
    "dino.bottleneck_dim=16",
    "train.batch_size=8",
    "train.log_every=1",
    "train.precision=fp32",
    "data.num_workers=0",
]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_cli_logs_dino_scalars_and_exports_the_teacher(tmp_path):
    data = write_images(tmp_path / "imgs", 16)
    run = tmp_path / "run"
    argv = ["pretrain", "dino-cifar10", *DINO_TINY, "--data", str(data), "--out", str(run), "--max-steps", "3"]
    assert main(argv) == 0
    rows = _rows(run)
    assert len(rows) == 3
    for row in rows:
        assert {"teacher_entropy", "kl", "teacher_temp", "teacher_momentum"} <= set(row), row
        assert 0 <= row["teacher_entropy"] <= torch.log(torch.tensor(64.0)) + 1e-4
    assert rows[0]["teacher_momentum"] == pytest.approx(0.99)  # the preset's start of the cosine
    state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert state["center"].abs().sum() > 0
    # the exported backbone is the teacher's, not the student's
    from safetensors.torch import load_file

    exported = load_file(run / "backbone.safetensors")
    key = "blocks.0.attn.qkv.weight"
    torch.testing.assert_close(exported[key], state["teacher.backbone." + key])
    assert not torch.equal(exported[key], state["backbone." + key])
    spec = json.loads((run / "backbone.json").read_text())
    assert spec["exported"] == "teacher.backbone" and spec["patch_size"] == 4 and spec["dynamic_img_size"]
    # evaluation rebuilds the teacher from the export and from a training checkpoint alike
    for source in (run, run / "checkpoints" / "last.pt"):
        backbone, _ = load_backbone(source)
        torch.testing.assert_close(backbone.state_dict()[key], state["teacher.backbone." + key])
        assert backbone(torch.zeros(2, 3, 16, 16)).shape == (2, 64)


def test_resume_after_interruption_gives_identical_losses(tmp_path):
    data = write_images(tmp_path / "imgs", 24)  # 3 steps per epoch: the last layer unfreezes at step 3
    # the preset's stochastic depth (0.1) draws random masks in every step: they must be the same after resuming
    extra = [
        *DINO_TINY,
        f"data.path={data}",
        "train.epochs=2",
        *DINO_PAPER_SCHEDULE,
    ]
    cfg = load_config("dino-cifar10", extra)
    full = pretrain(cfg, tmp_path / "full")
    assert full["status"] == "completed" and full["steps"] == 6

    def interrupt(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    part = pretrain(load_config("dino-cifar10", extra), tmp_path / "resumed", on_step=interrupt)
    assert part["status"] == "interrupted" and part["steps"] == 4
    done = pretrain(load_config("dino-cifar10", extra), tmp_path / "resumed")
    assert done["status"] == "completed" and done["steps"] == 6
    a, b = _rows(tmp_path / "full"), _rows(tmp_path / "resumed")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-6)
    assert [r["teacher_temp"] for r in a] == [0.04, 0.04, 0.04, 0.07, 0.07, 0.07]
    end_a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    end_b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert any(k.startswith("teacher.") for k in end_a) and "center" in end_a
    for k in end_a:
        if isinstance(end_a[k], torch.Tensor):
            torch.testing.assert_close(end_a[k], end_b[k], rtol=0, atol=1e-6, msg=k)
