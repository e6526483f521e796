"""--init and the metric sinks inside the real training loop (model.init, log.tensorboard)."""

from __future__ import annotations

import json

import pytest
import torch

from openseer.checkpoint import load_checkpoint
from openseer.config import load_config
from openseer.train import pretrain
from openseer.weights import WeightsError
from tests.helpers import TINY_OVERRIDES, write_images

# TINY_OVERRIDES warm up over the first step from lr 0: after one step the weights are exactly the initial ones


def _run(root, name, *extra, steps=1):
    data = root / "unlabelled"
    if not data.exists():
        write_images(data, 16, size=24)
    cfg = load_config("demo", [*TINY_OVERRIDES, f"data.path={data}", f"train.max_steps={steps}", *extra])
    pretrain(cfg, root / name)
    return root / name


def _model(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def test_init_from_a_run_takes_backbone_head_and_prototypes_and_not_again_on_resume(tmp_path):
    source = _run(tmp_path, "source", "train.seed=1")
    scratch = _model(_run(tmp_path, "scratch"))
    continued_dir = _run(tmp_path, "continued", f"model.init={source}")
    continued, expected = _model(continued_dir), _model(source)
    for key in (
        "backbone.stem.conv.weight",
        "backbone.s4.b1.conv2.conv.weight",
        "head.mlp.0.weight",
        "prototypes.weight",
    ):
        torch.testing.assert_close(continued[key], expected[key], msg=key)
        assert not torch.equal(scratch[key], expected[key]), key  # the seeds differ: init did something
    # resuming never re-applies the starting weights (the file may even be gone)
    _run(tmp_path, "continued", f"model.init={tmp_path / 'gone'}", steps=2)
    assert json.loads((continued_dir / "summary.json").read_text())["steps"] == 2


def test_init_strict_error_and_partial_load(tmp_path):
    source = _run(tmp_path, "source", "train.seed=1")
    with pytest.raises(WeightsError, match=r"prototypes\.weight.*\[10, 16\].*\[12, 16\]"):
        _run(tmp_path, "strict", f"model.init={source}", "swav.num_prototypes=12")
    loose = _model(_run(tmp_path, "loose", f"model.init={source}", "swav.num_prototypes=12", "model.init_strict=false"))
    torch.testing.assert_close(loose["backbone.stem.conv.weight"], _model(source)["backbone.stem.conv.weight"])


def test_tensorboard_receives_the_metrics_rows(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path, "run", "log.tensorboard=true", steps=2)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(r["step"], pytest.approx(r["loss"])) for r in rows]
    assert [e.step for e in acc.Scalars("images_per_s")] == [r["step"] for r in rows]
