"""The weights features through the `openseer` command: --init, --checkpoint SOURCE, export, TensorBoard."""

from __future__ import annotations

import json

import torch

from openseer.checkpoint import load_checkpoint
from openseer.cli import main
from tests.helpers import TINY_OVERRIDES, write_images

# lr 0 at the first step (warm-up from 0): after one step the weights are still exactly the initial ones
FROZEN_STEP = ["optim.warmup_start_lr=0.0", "optim.warmup_epochs=1.0"]


def _pretrain(root, out, *extra):
    data = root / "unlabelled"
    if not data.exists():
        write_images(data, 16, size=24)
    argv = ["pretrain", "demo", *TINY_OVERRIDES, *FROZEN_STEP, "--data", str(data), "--out", str(out)]
    argv += ["--max-steps", "1"]
    return main([*argv, *extra])


def test_pretrain_init_from_another_run_takes_backbone_head_and_prototypes(tmp_path, capsys):
    assert _pretrain(tmp_path, tmp_path / "source", "optim.warmup_epochs=0.0") == 0  # a trained source
    source = load_checkpoint(tmp_path / "source" / "checkpoints" / "last.pt")["model"]
    assert _pretrain(tmp_path, tmp_path / "continued", "--init", str(tmp_path / "source")) == 0
    continued = load_checkpoint(tmp_path / "continued" / "checkpoints" / "last.pt")["model"]
    for key in ("backbone.stem.conv.weight", "head.mlp.0.weight", "prototypes.weight"):
        torch.testing.assert_close(continued[key], source[key], msg=key)
    assert "model.init" not in capsys.readouterr().err  # no error
    cfg = (tmp_path / "continued" / "config.yaml").read_text()
    assert str(tmp_path / "source") in cfg


def test_init_strict_refuses_other_head_sizes_and_false_loads_the_rest(tmp_path, capsys):
    assert _pretrain(tmp_path, tmp_path / "source") == 0
    bigger = ["swav.num_prototypes=12"]
    assert _pretrain(tmp_path, tmp_path / "strict", *bigger, "--init", str(tmp_path / "source")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prototypes.weight" in err[0]
    argv = [*bigger, "--init", str(tmp_path / "source"), "--init-strict", "false"]
    assert _pretrain(tmp_path, tmp_path / "loose", *argv) == 0


def test_tensorboard_gets_the_metrics_rows(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert _pretrain(tmp_path, tmp_path / "run", "log.tensorboard=true", "train.log_every=1") == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("lr")] == [(r["step"], r["lr"]) for r in rows]
