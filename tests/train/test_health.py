"""Label-free health signals (openseer.train.health): the rows carry them at the configured cadence (the backbone's,
the method's output embedding's and the method's probe signals), they do not change training, a collapse warns once
(and stops only when asked), the best label-free step is named and kept, and a probe set larger than the pool is one
clear error."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from openseer.checkpoint import load_checkpoint
from openseer.config import ConfigError, load_config
from openseer.methods.base import RANK_COLLAPSE, CollapseSignal, Method
from openseer.methods.swav import SwAV
from openseer.ops.collapse import alpha_req, embedding_std, rankme
from openseer.train import pretrain
from openseer.train.health import (
    WINDOW,
    CollapseWatch,
    HealthMonitor,
    auto_probe_size,
    health_every,
    new_health_state,
)
from tests.helpers import TINY_OVERRIDES, write_images

FAST = [*TINY_OVERRIDES, "aug.local_crops=0", "optim.warmup_epochs=0", "train.max_steps=5", "train.precision=fp32"]


def _cfg(data: Path, *extra: str):
    return load_config("demo", [*FAST, f"data.path={data}", *extra])


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_health_rows_at_their_cadence_do_not_change_training_and_keep_the_best_step(tmp_path):
    data = write_images(tmp_path / "imgs", 24)
    plain = pretrain(_cfg(data, "train.health_every=0"), tmp_path / "plain")
    assert plain["best_label_free"] is None and plain["health"] is None
    summary = pretrain(
        _cfg(data, "train.health_every=2", "train.health_images=12", "train.keep_best_label_free=true"),
        tmp_path / "health",
    )
    rows, plain_rows = _rows(tmp_path / "health"), _rows(tmp_path / "plain")
    # a check at the first row at or past each multiple of 2, and at the last step (5)
    assert [r["step"] for r in rows if "health_rankme" in r] == [2, 4, 5]
    # SwAV (the demo preset): its output embedding and its prototype codes in the same rows
    head_and_codes = {"health_head_rankme", "health_head_alpha_req", "health_head_std"} | CODES
    assert all(head_and_codes <= r.keys() for r in rows if "health_rankme" in r)
    assert all(
        0 <= r["health_code_entropy"] <= 1 and 0 < r["health_code_occupancy"] <= 1 for r in rows if CODES <= r.keys()
    )
    assert not any("health_rankme" in r or "health_head_rankme" in r for r in plain_rows)
    assert [r["loss"] for r in rows] == [r["loss"] for r in plain_rows]  # exact: no effect on training
    assert summary["health"]["checks"] == 3 and summary["health"]["images"] == 12
    # the best label-free step: the row with the highest backbone RankMe, its checkpoint kept
    best = max((r for r in rows if "health_rankme" in r), key=lambda r: r["health_rankme"])
    expected = {"step": best["step"], "score": best["health_rankme"], "signal": "health_rankme"}
    assert summary["best_label_free"] == expected
    kept = load_checkpoint(tmp_path / "health" / "checkpoints" / "best_label_free.pt")
    assert kept["step"] == best["step"]


CODES = {"health_code_entropy", "health_code_occupancy"}


def test_a_method_without_prototypes_logs_its_output_embedding_but_no_codes(tmp_path):
    data = write_images(tmp_path / "imgs", 16)
    tiny = ["byol.hidden_dim=32", "byol.output_dim=16", "train.max_steps=2", "train.health_every=2"]
    cfg = load_config("byol-cifar10", [*FAST, f"data.path={data}", *tiny, "train.health_images=8"])
    pretrain(cfg, tmp_path / "run")
    (checked,) = [r for r in _rows(tmp_path / "run") if "health_rankme" in r]
    assert checked["step"] == 2 and not CODES & checked.keys()
    assert 1 <= checked["health_head_rankme"] <= 8 and checked["health_head_std"] > 0


class Head(Method):
    """A toy method: its output embedding is a linear map of the backbone features it is given."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone, self.proj = backbone, torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.BatchNorm1d(5))

    def head_embed(self, images, features=None):
        return self.proj(self.backbone(images) if features is None else features)

    def probe_signals(self, embeddings):
        return {"health_toy_rows": float(len(embeddings))}


def test_the_health_monitor_scores_the_backbone_on_its_probe_in_eval_mode(tmp_path):
    data = write_images(tmp_path / "imgs", 10)
    monitor = HealthMonitor(str(data), 6, 24, 1.0, (0.5,) * 3, (0.25,) * 3, every=3, log_every=1, batch_size=4)
    assert len(monitor.images) == 6
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 8), torch.nn.BatchNorm1d(8))
    backbone.train()
    row = monitor.evaluate(backbone)
    assert backbone.training  # train mode restored
    backbone.eval()
    expected = rankme(backbone(monitor.images).detach())  # eval mode: BatchNorm running statistics
    assert row["health_rankme"] == pytest.approx(expected, rel=1e-6)
    assert [s for s in range(1, 11) if monitor.due(s, last=False)] == [3, 6, 9]
    # with the method: its output embedding of the same features (the backbone runs once per batch, in eval mode)
    method = Head(backbone).train()
    method.backbone.eval()  # a submodule's own mode survives the check
    calls = []
    backbone.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    row = monitor.evaluate(backbone, method)
    assert calls == [4, 2] and method.training and method.proj.training and not backbone.training
    method.eval()
    z = method.proj(backbone(monitor.images)).detach()
    assert row["health_head_rankme"] == pytest.approx(rankme(z), rel=1e-6)
    assert row["health_head_alpha_req"] == pytest.approx(alpha_req(z), rel=1e-6)
    assert row["health_head_std"] == pytest.approx(float(embedding_std(z)), rel=1e-6)
    assert row["health_toy_rows"] == 6.0 and row["health_rankme"] == pytest.approx(expected, rel=1e-6)


def test_a_probe_set_larger_than_the_pool_is_one_clear_line(tmp_path):
    data = write_images(tmp_path / "imgs", 10)
    with pytest.raises(ConfigError) as e:
        HealthMonitor(str(data), 11, 24, 1.0, (0.5,) * 3, (0.25,) * 3, every=1, log_every=1)
    assert "train.health_images=11" in str(e.value) and "10 images" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="train.health_every=-2"):
        load_config("demo", ["train.health_every=-2"])


def test_auto_cadence_is_a_quarter_epoch_on_the_log_cadence():
    cfg = load_config("demo", ["train.log_every=10"])
    assert health_every(cfg, 100) == 30  # 25 rounded up to a multiple of 10
    assert health_every(cfg, 8) == 10  # at least the log cadence
    assert health_every(load_config("demo", ["train.health_every=7"]), 100) == 7
    # the default probe: pool/20 within [256, 2000], the whole pool when smaller than 256
    assert [auto_probe_size(n) for n in (24, 1000, 10_000, 50_000, 1_281_167)] == [24, 256, 500, 2000, 2000]


def test_the_watch_warns_once_after_a_sustained_window_past_the_warmup(caplog):
    sig = CollapseSignal("z_std", 0.01, "below", "do X")
    watch = CollapseWatch((sig,), start_step=2, stop=False, state=new_health_state())
    values = [0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]  # steps 1-2: warm-up; 4: healthy again
    with caplog.at_level(logging.WARNING, logger="openseer"):
        for step, v in enumerate(values, start=1):
            watch.observe({"step": step, "z_std": v})
    warnings = watch.state["warnings"]
    assert len(warnings) == 1 and warnings[0]["step"] == 5 + WINDOW - 1
    assert warnings[0]["signal"] == "z_std" and warnings[0]["remedy"] == "do X"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "z_std=0" in lines[0] and "below 0.01" in lines[0] and "do X" in lines[0]
    assert not watch.stop_requested


def _collapsed_features(self, backbone, method=None):
    self.checks += 1
    return {"health_rankme": 1.0, "health_alpha_req": float("inf"), "health_feature_std": 0.0}


@pytest.mark.parametrize("stop", [False, True])
def test_a_forced_collapse_warns_once_and_stops_only_when_asked(tmp_path, monkeypatch, stop):
    monkeypatch.setattr(HealthMonitor, "evaluate", _collapsed_features)  # a backbone whose output is constant
    data = write_images(tmp_path / "imgs", 24)
    cfg = _cfg(data, "train.health_every=1", "train.health_images=8", f"train.stop_on_collapse={str(stop).lower()}")
    summary = pretrain(cfg, tmp_path / "run")
    warnings = summary["collapse_warnings"]
    assert [(w["signal"], w["step"], w["value"]) for w in warnings] == [("health_rankme", WINDOW, 1.0)]
    assert warnings[0]["remedy"] == RANK_COLLAPSE.remedy
    if stop:
        assert summary["status"] == "collapsed" and summary["steps"] == WINDOW
        assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == WINDOW
    else:
        assert summary["status"] == "completed" and summary["steps"] == 5
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["collapse_warnings"] == warnings


def _collapsed_codes(self, embeddings):
    return {"health_code_entropy": 0.0, "health_code_occupancy": 0.01}  # every probe image on one prototype


def test_a_forced_low_probe_occupancy_warns_once_with_the_swav_remedy(tmp_path, monkeypatch):
    monkeypatch.setattr(SwAV, "probe_signals", _collapsed_codes)
    data = write_images(tmp_path / "imgs", 24)
    summary = pretrain(_cfg(data, "train.health_every=1", "train.health_images=8"), tmp_path / "run")
    warnings = [w for w in summary["collapse_warnings"] if w["signal"] == "health_code_occupancy"]
    assert [(w["step"], w["value"], w["line"], w["direction"]) for w in warnings] == [(WINDOW, 0.01, 0.1, "below")]
    remedy = warnings[0]["remedy"]  # the batch occupancy's, as docs/methods.md gives it
    assert "swav.freeze_prototypes_steps" in remedy and "swav.queue_length" in remedy and "swav.epsilon" in remedy
    assert summary["status"] == "completed"
