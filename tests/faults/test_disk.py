"""Disk full, I/O errors and read-only folders while writing a checkpoint or the metrics: the run stops with
one line naming the file and the errno (exit code 2, no traceback), the previous checkpoint still loads, no
temporary file is left, and re-running the same command once the fault is gone resumes to the same result."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
import torch

from openseer.checkpoint import load_checkpoint
from openseer.cli import main
from tests.faults.common import RUN_OVERRIDES, RUN_STEPS, assert_bitwise_equal, final_weights, metrics_rows
from tests.helpers import write_images


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "demo", *RUN_OVERRIDES, *extra, "--data", str(data), "--out", str(out)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    data = write_images(root / "imgs", 24)
    assert main(_argv(data, root / "reference")) == 0
    return data, root, metrics_rows(root / "reference"), final_weights(root / "reference")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("openseer: error:")]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


def _fail_third_checkpoint_save(monkeypatch, code: int) -> None:
    """torch.save writes half of the 3rd checkpoint (the one at step 4), then the disk is full / fails."""
    save, calls = torch.save, []

    def failing(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) != 3:
            return save(obj, f, *args, **kwargs)
        f.write(b"\0" * 1000)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", failing)


def _fail_third_last_pt_rename(monkeypatch, code: int) -> None:
    replace, calls = os.replace, []

    def failing(src, dst, *args, **kwargs):
        if str(dst).endswith("last.pt"):
            calls.append(1)
            if len(calls) == 3:
                raise OSError(code, os.strerror(code))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing)


def _checkpoints_become_read_only(monkeypatch, code: int) -> None:
    """The 3rd temporary file in checkpoints/ cannot be created (as on a file system remounted read-only)."""
    mkstemp, calls = tempfile.mkstemp, []

    def failing(*args, **kwargs):
        if Path(kwargs.get("dir", "")).name == "checkpoints":
            calls.append(1)
            if len(calls) == 3:
                raise OSError(code, os.strerror(code), kwargs["dir"])
        return mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", failing)


FAULTS = {
    "enospc_in_torch_save": (_fail_third_checkpoint_save, errno.ENOSPC),
    "eio_in_torch_save": (_fail_third_checkpoint_save, errno.EIO),
    "eio_on_rename": (_fail_third_last_pt_rename, errno.EIO),
    "erofs_on_create": (_checkpoints_become_read_only, errno.EROFS),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_checkpoint_write_error_stops_with_one_line_and_rerun_resumes(reference, fault, tmp_path, monkeypatch, capsys):
    data, _, rows, weights = reference
    inject, code = FAULTS[fault]
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        inject(m, code)
        assert main(_argv(data, run)) == 2
    line = _error_line(capsys)
    assert f"cannot write {run / 'checkpoints' / 'last.pt'}" in line
    assert f"[Errno {code} {errno.errorcode[code]}]" in line and "run the same command again" in line
    ckpts = run / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["step"] == 3  # the previous checkpoint (end of epoch 0) is intact
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert main(_argv(data, run)) == 0  # the fault is gone: the same command resumes
    assert metrics_rows(run) == rows
    assert_bitwise_equal(final_weights(run), weights)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) for a real ENOSPC")
def test_metrics_write_on_a_full_disk(reference, tmp_path, capsys):
    """A real ENOSPC: metrics.jsonl is a link to /dev/full, whose writes always fail with 'no space left'."""
    data, root, _, _ = reference
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")
    assert main(_argv(data, run, "train.log_every=3")) == 2  # the first row, at step 3, cannot be written
    line = _error_line(capsys)
    assert f"cannot write {run / 'metrics.jsonl'}: [Errno {errno.ENOSPC} ENOSPC]" in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2  # written before step 3
    (run / "metrics.jsonl").unlink()  # space freed
    assert main(_argv(data, run, "train.log_every=3")) == 0
    assert main(_argv(data, root / "reference3", "train.log_every=3")) == 0
    rows, reference_rows = metrics_rows(run), metrics_rows(root / "reference3")
    assert [r[0] for r in rows] == [r[0] for r in reference_rows] == [3, 6]
    # the row of step 3 is the mean over steps 1-3: the sums of steps 1-2 travelled in the step-2 checkpoint
    assert rows == reference_rows
    assert_bitwise_equal(final_weights(run), final_weights(root / "reference3"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_checkpoint_folder(reference, tmp_path, capsys):
    data, _, rows, _ = reference
    run = tmp_path / "run"
    assert main(_argv(data, run, "train.max_steps=2")) == 0
    (run / "checkpoints").chmod(0o555)
    try:
        assert main(_argv(data, run)) == 2
        assert f"[Errno {errno.EACCES} EACCES]" in _error_line(capsys)
        assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    finally:
        (run / "checkpoints").chmod(0o755)
    assert main(_argv(data, run)) == 0
    assert metrics_rows(run) == rows
    assert len(metrics_rows(run)) == RUN_STEPS
