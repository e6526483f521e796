import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from openseer.checkpoint import load_checkpoint, save_checkpoint
from openseer.config import ConfigError, load_config
from openseer.train import pretrain
from tests.helpers import TINY_OVERRIDES, write_images


def _cfg(data: Path, *extra: str):
    return load_config("demo", [*TINY_OVERRIDES, f"data.path={data}", *extra])


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_interruption_gives_identical_losses(tmp_path):
    data = write_images(tmp_path / "imgs", 24)
    extra = [
        "train.epochs=2",
        "swav.queue_length=16",
        "swav.queue_start_epoch=0",
        "swav.freeze_prototypes_steps=2",
    ]
    full = pretrain(_cfg(data, *extra), tmp_path / "full")
    assert full["status"] == "completed" and full["steps"] == 6

    def interrupt(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    part = pretrain(_cfg(data, *extra), tmp_path / "resumed", on_step=interrupt)
    assert part["status"] == "interrupted" and part["steps"] == 4
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 4
    assert not (tmp_path / "resumed" / "backbone.safetensors").exists()
    done = pretrain(_cfg(data, *extra), tmp_path / "resumed")
    assert done["status"] == "completed" and done["steps"] == 6
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "resumed")
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, abs=1e-6)
    end_a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    end_b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    for k in end_a:
        if isinstance(end_a[k], torch.Tensor):
            torch.testing.assert_close(end_a[k], end_b[k], rtol=0, atol=1e-6)


def test_run_dir_contents_and_prototype_freeze(tmp_path):
    data = write_images(tmp_path / "imgs", 16)
    run = tmp_path / "run"
    summary = pretrain(
        _cfg(
            data,
            "train.epochs=2",
            "train.checkpoint_every=1",
            "train.keep_checkpoints=10",
            "swav.freeze_prototypes_steps=2",
        ),
        run,
    )
    for name in (
        "config.yaml",
        "derived.json",
        "metrics.jsonl",
        "summary.json",
        "backbone.safetensors",
        "backbone.json",
        "checkpoints/last.pt",
    ):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"step", "epoch", "loss", "lr", "wd", "images_per_s", "seconds"} <= set(rows[0])
    assert json.loads((run / "summary.json").read_text())["steps"] == summary["steps"] == 4
    protos = [
        load_checkpoint(run / "checkpoints" / f"step_{s:08d}.pt")["model"]["prototypes.weight"] for s in (1, 2, 3)
    ]
    torch.testing.assert_close(protos[0], protos[1], rtol=0, atol=1e-6)  # frozen: lr multiplier 0
    assert (protos[2] - protos[1]).abs().max() > 1e-5  # step 3 updates them


def test_resume_refuses_a_different_config(tmp_path):
    data = write_images(tmp_path / "imgs", 16)
    pretrain(_cfg(data, "train.max_steps=1"), tmp_path / "run")
    with pytest.raises(ConfigError, match="different config.*swav.num_prototypes"):
        pretrain(_cfg(data, "train.max_steps=2", "swav.num_prototypes=11"), tmp_path / "run")


def test_corrupt_images_are_skipped_counted_and_reported(tmp_path):
    data = write_images(tmp_path / "imgs", 16)
    (data / "zero.jpg").write_bytes(b"")
    (data / "text.jpg").write_text("not an image")
    good = (data / "sub0" / "0000.png").read_bytes()
    (data / "trunc.png").write_bytes(good[: len(good) // 3])
    summary = pretrain(_cfg(data, "train.epochs=1"), tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["skipped_images"] == 3
    assert set(summary["skipped"]) == {"zero.jpg", "text.jpg", "trunc.png"}
    assert summary["skipped_by_reason"]["empty"] == 1


def test_nonfinite_loss_is_reported_and_aborts(tmp_path, monkeypatch):
    data = write_images(tmp_path / "imgs", 16)
    from openseer.methods.swav import SwAV
    from openseer.train import TrainingError

    monkeypatch.setattr(SwAV, "swapped_prediction_loss", lambda self, s, q, b: s.sum() * float("nan"))
    with pytest.raises(TrainingError, match="2 consecutive non-finite steps"):
        pretrain(_cfg(data, "train.max_nonfinite_steps=2", "train.epochs=3"), tmp_path / "run")


def test_conversions_are_counted_per_kind_in_summary_and_checkpoint(tmp_path):
    data = tmp_path / "cmyk"
    data.mkdir()
    for i in range(8):
        Image.new("CMYK", (20, 20), (i * 30, 40, 0, 10)).save(data / f"{i}.jpg")
    summary = pretrain(_cfg(data, "train.max_steps=2", "train.batch_size=8"), tmp_path / "run")
    assert summary["conversions"] == {"cmyk": 16}  # 2 steps x 8 images, each converted to RGB
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["conversions"] == {"cmyk": 16}
    # resumed runs keep counting from the checkpoint
    summary = pretrain(_cfg(data, "train.max_steps=3", "train.batch_size=8"), tmp_path / "run")
    assert summary["conversions"] == {"cmyk": 24}
    # a checkpoint written before the key was renamed ("input_counts") resumes with its count
    old = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    old["input_counts"] = old.pop("conversions")
    save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", old)
    summary = pretrain(_cfg(data, "train.max_steps=4", "train.batch_size=8"), tmp_path / "run")
    assert summary["conversions"] == {"cmyk": 32}
