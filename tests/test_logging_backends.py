"""TensorBoard and W&B sinks: what the loop logs comes back out of the event file / the W&B calls."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from PIL import Image

from openseer.config import ConfigError, load_config
from openseer.logging_backends import NullSink, TensorBoardSink, log_images, sink_from_config


def _png(path, colour):
    Image.fromarray(np.full((12, 16, 3), colour, dtype=np.uint8)).save(path)
    return path


def test_tensorboard_event_file_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config("demo", ["log.tensorboard=true"])
    sink = sink_from_config(cfg, tmp_path)
    assert isinstance(sink, TensorBoardSink)
    rows = [
        {"step": 10, "epoch": 0, "loss": 8.5, "lr": 0.1, "images_per_s": 300.0, "nonfinite_steps": 0},
        {"step": 20, "epoch": 0, "loss": None, "lr": 0.2, "images_per_s": 310.0, "nonfinite_steps": 10},
        {"step": 30, "epoch": 1, "loss": 7.25, "lr": 0.3, "knn_top1": 41.5, "note": "text is skipped"},
    ]
    for row in rows:
        sink.log(row["step"], row)
    (tmp_path / "report").mkdir()
    _png(tmp_path / "report" / "curves.png", (255, 0, 0))
    _png(tmp_path / "report" / "neighbours.png", (0, 0, 255))
    assert log_images(sink, tmp_path / "report", 30) == 2
    sink.close()

    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert loss == [(10, 8.5), (30, 7.25)]  # the None window is left out
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("lr")] == [(10, 0.1), (20, 0.2), (30, 0.3)]
    assert [(e.step, e.value) for e in acc.Scalars("knn_top1")] == [(30, 41.5)]
    assert "note" not in acc.Tags()["scalars"] and "step" not in acc.Tags()["scalars"]
    (img,) = acc.Images("report/curves")
    assert (img.step, img.width, img.height) == (30, 16, 12)
    decoded = np.asarray(Image.open(__import__("io").BytesIO(img.encoded_image_string)).convert("RGB"))
    assert decoded[0, 0].tolist() == [255, 0, 0]


def test_wandb_sink_logs_the_same_scalars_and_images(tmp_path, monkeypatch):
    calls: list[tuple] = []

    class Run:
        def log(self, data, step=None):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    fake.Image = lambda path: ("image", path)
    monkeypatch.setitem(sys.modules, "wandb", fake)

    cfg = load_config("demo", ["log.wandb=my-project"])
    sink = sink_from_config(cfg, tmp_path / "run")
    sink.log(5, {"step": 5, "loss": 3.0, "lr": 0.5, "loss_is": None})
    sink.log_image("report/curves", _png(tmp_path / "c.png", (0, 255, 0)), 5)
    sink.close()
    init = calls[0][1]
    assert init["project"] == "my-project" and init["id"] == "abc123" and init["resume"] == "allow"
    assert init["config"]["log"]["wandb"] == "my-project"
    assert calls[1] == ("log", {"loss": 3.0, "lr": 0.5}, 5)
    assert calls[2] == ("log", {"report/curves": ("image", str(tmp_path / "c.png"))}, 5)
    assert calls[3] == ("finish",)
    # a resumed run reuses its W&B id
    assert (tmp_path / "run" / "wandb_id.txt").read_text().strip() == "abc123"


def test_off_by_default_and_missing_package_is_one_line(tmp_path, monkeypatch):
    assert isinstance(sink_from_config(load_config("demo"), tmp_path), NullSink)
    assert isinstance(
        sink_from_config(load_config("demo", ["log.tensorboard=true"]), tmp_path, is_main=False), NullSink
    )
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'openseer\[wandb\]'"):
        sink_from_config(load_config("demo", ["log.wandb=p"]), tmp_path)
