"""Damaged checkpoints: resume falls back to the newest intact one and says so in one log line, or refuses
with one line naming the files; never a traceback, never silently starting again from scratch."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from openseer.checkpoint import load_checkpoint
from openseer.cli import main
from openseer.config import load_config
from openseer.train import pretrain
from tests.faults.common import RUN_OVERRIDES, assert_bitwise_equal, final_weights, metrics_rows
from tests.helpers import write_images

INTERRUPT_AT = 5  # last.pt at step 5 and step_0000000{2,4}.pt; sharded: step_0000000{2,3,4,5}/


def _cfg(data: Path, *extra: str):
    return load_config("demo", [*RUN_OVERRIDES, f"data.path={data}", *extra])


def _interrupt(step: int, loss: float) -> None:
    if step == INTERRUPT_AT:
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The data, an uninterrupted reference run, and runs interrupted at step 5 with full and sharded
    checkpoints."""
    root = tmp_path_factory.mktemp("corrupt")
    data = write_images(root / "imgs", 24)
    pretrain(_cfg(data), root / "reference")
    pretrain(_cfg(data), root / "full", on_step=_interrupt)
    pretrain(_cfg(data, "parallel.checkpoint_format=sharded"), root / "sharded", on_step=_interrupt)
    ckpts = root / "full" / "checkpoints"
    assert {p.name for p in ckpts.iterdir()} == {"last.pt", "step_00000002.pt", "step_00000004.pt"}
    sharded = root / "sharded" / "checkpoints"
    assert {p.name for p in sharded.iterdir()} == {"LATEST", *(f"step_{k:08d}" for k in (2, 3, 4, 5))}
    return data, root


def _copy(root: Path, name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(root / name, run)
    return run


def _resumes_from(run: Path, step: int, data: Path, root: Path, caplog, *extra: str, passed_over: list[str]):
    """Re-running resumes from ``step`` (one warning line naming what was passed over) and ends equal to the
    uninterrupted run."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="openseer"):
        summary = pretrain(_cfg(data, *extra), run)
    assert summary["status"] == "completed"
    warnings = [r.getMessage() for r in caplog.records if "newest intact checkpoint" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert f"(step {step})" in warnings[0]
    for name in passed_over:
        assert name in warnings[0], (name, warnings[0])
    resumed_at = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert resumed_at and resumed_at[0].endswith(f"at step {step}")
    assert metrics_rows(run) == metrics_rows(root / "reference")
    if (run / "checkpoints" / "last.pt").is_file():
        return final_weights(run)
    return {k: v for k, v in load_file(run / "backbone.safetensors").items()}


def test_last_pt_cut_in_half_falls_back_to_the_newest_step_file(runs, tmp_path, caplog):
    data, root = runs
    run = _copy(root, "full", tmp_path)
    last = run / "checkpoints" / "last.pt"
    os.truncate(last, last.stat().st_size // 2)
    weights = _resumes_from(run, 4, data, root, caplog, passed_over=[str(last)])
    assert_bitwise_equal(weights, final_weights(root / "reference"))


def test_zero_byte_step_file_is_passed_over(runs, tmp_path, caplog):
    data, root = runs
    run = _copy(root, "full", tmp_path)
    (run / "checkpoints" / "last.pt").unlink()
    (run / "checkpoints" / "step_00000004.pt").write_bytes(b"")
    weights = _resumes_from(run, 2, data, root, caplog, passed_over=["step_00000004.pt is empty"])
    assert_bitwise_equal(weights, final_weights(root / "reference"))


def test_sharded_checkpoint_missing_a_shard_or_a_directory(runs, tmp_path, caplog):
    data, root = runs
    run = _copy(root, "sharded", tmp_path)
    ckpts = run / "checkpoints"
    (ckpts / "step_00000005" / "__0_0.distcp").unlink()
    shutil.rmtree(ckpts / "step_00000004")  # and the next older one is gone altogether
    sharded = "parallel.checkpoint_format=sharded"
    weights = _resumes_from(run, 3, data, root, caplog, sharded, passed_over=["step_00000005/__0_0.distcp is missing"])
    # the resumed run wrote its own sharded checkpoints; its losses (checked above) and backbone equal the reference's
    reference = load_file(root / "reference" / "backbone.safetensors")
    assert_bitwise_equal(weights, reference)
    assert (ckpts / "LATEST").read_text().strip() == "step_00000006"


def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("openseer: error:")]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


def test_no_intact_checkpoint_is_refused_not_restarted(runs, tmp_path, capsys):
    data, root = runs
    run = _copy(root, "full", tmp_path)
    ckpts = run / "checkpoints"
    os.truncate(ckpts / "last.pt", 100)
    (ckpts / "step_00000004.pt").write_bytes(b"")
    (ckpts / "step_00000002.pt").write_bytes(b"PK\x03\x04 not a zip archive")
    before = {p.name: p.read_bytes() for p in [*run.iterdir(), *ckpts.iterdir()] if p.is_file()}
    line = _refused(["pretrain", "demo", *RUN_OVERRIDES, "--data", str(data), "--out", str(run)], capsys)
    assert f"no usable checkpoint in {ckpts}" in line
    for name in ("last.pt", "step_00000004.pt is empty", "step_00000002.pt"):
        assert name in line
    after = {p.name: p.read_bytes() for p in [*run.iterdir(), *ckpts.iterdir()] if p.is_file()}
    assert after == before  # nothing started from scratch, nothing overwritten


def test_checkpoint_of_another_config_is_refused_in_one_line(runs, tmp_path, capsys):
    data, root = runs
    run = _copy(root, "full", tmp_path)
    argv = ["pretrain", "demo", *RUN_OVERRIDES, "swav.num_prototypes=11", "--data", str(data), "--out", str(run)]
    line = _refused(argv, capsys)
    assert f"{run} holds a run with a different config (swav.num_prototypes" in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == INTERRUPT_AT
