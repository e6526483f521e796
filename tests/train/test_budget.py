"""``train.minutes`` / ``pretrain --minutes``: a throughput probe turns the minutes into the steps that every
schedule spans; the plan is kept for a resume; bad budgets are one line each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openseer.cli import main
from openseer.config import ConfigError, load_config, validate
from openseer.train import budget, pretrain
from tests.helpers import TINY_OVERRIDES, write_images


def _rows(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"], r["wd"]) for r in rows]


@pytest.fixture
def probed(monkeypatch):
    """A probe that measures 8 images/s for a global batch of 8 (one step a second), and counts its calls."""
    calls = []

    def probe(cfg, scratch, run):
        calls.append(scratch)
        return {"images_per_s": 8.0, "global_batch": cfg.train.batch_size}

    monkeypatch.setattr(budget, "probe_throughput", probe)
    return calls


def test_the_budget_replaces_the_epochs_and_a_resume_keeps_it(tmp_path, probed):
    data = write_images(tmp_path / "imgs", 24)  # 3 steps an epoch at batch 8

    def cfg(*extra):
        return load_config("demo", [*TINY_OVERRIDES, f"data.path={data}", "train.epochs=1", *extra])

    # 0.125 minutes at one step a second: 7.5 -> 7 steps, although one epoch is 3
    summary = pretrain(cfg("train.minutes=0.125"), tmp_path / "timed")
    assert summary["status"] == "completed" and summary["steps"] == summary["total_steps"] == 7
    assert summary["budget"]["steps"] == 7 and summary["budget"]["minutes"] == 0.125
    assert summary["budget"]["used_minutes"] > 0 and len(probed) == 1
    assert json.loads((tmp_path / "timed" / "budget.json").read_text())["steps"] == 7
    # the schedules span the 7 steps: the same rows as a 7-step run laid out by epochs (3 x 3, capped at 7)
    pretrain(cfg("train.epochs=3", "train.max_steps=7"), tmp_path / "steps")
    assert _rows(tmp_path / "timed") == _rows(tmp_path / "steps")

    # a rerun reuses the plan (no second probe); other minutes on the same run are refused before any probe
    assert pretrain(cfg("train.minutes=0.125"), tmp_path / "timed")["steps"] == 7 and len(probed) == 1
    with pytest.raises(ConfigError, match="planned for 0.125 minutes"):
        pretrain(cfg("train.minutes=1"), tmp_path / "timed")
    with pytest.raises(ConfigError, match="started without a time budget"):
        pretrain(cfg("train.minutes=1"), tmp_path / "steps")
    assert len(probed) == 1


def test_a_budget_too_short_for_one_step_is_one_line(tmp_path, probed):
    data = write_images(tmp_path / "imgs", 24)
    cfg = load_config("demo", [*TINY_OVERRIDES, f"data.path={data}", "train.minutes=0.01"])  # 0.6 s < 1 step
    with pytest.raises(ConfigError, match="fits no optimizer step: one step of 8 images takes 1.0 s"):
        pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "budget.json").exists()


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_minutes_in_a_config_are_refused(value):
    cfg = load_config("demo")
    cfg.train.minutes = value  # as a YAML file or the Python API can hold it
    with pytest.raises(ConfigError, match="train.minutes=.* must be a number of minutes >= 0"):
        validate(cfg)
    with pytest.raises(ConfigError, match="train.minutes="):  # the command line's parser refuses it too
        load_config("demo", [f"train.minutes={value}"])


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_bad_minutes_on_the_command_line_are_one_line(tmp_path, capsys, value):
    data = write_images(tmp_path / "imgs", 8)
    code = main(["pretrain", "demo", "--data", str(data), "--out", str(tmp_path / "run"), "--minutes", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--minutes must be a positive number of minutes" in err[0]
    assert not (tmp_path / "run").exists()
