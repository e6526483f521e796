"""openseer.weights.load: any SOURCE -> the file its weights come from; openseer's own files go to checkpoint.py."""

import pytest

from openseer.errors import CheckpointError
from openseer.weights.load import is_openseer_source, resolve_source


def test_resolve_source_strips_the_format_and_follows_a_run_dir(tmp_path):
    weights = tmp_path / "seer.torch"
    weights.write_bytes(b"x")
    assert resolve_source(f"vissl:{weights}") == weights
    assert resolve_source(weights) == weights
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    assert resolve_source(run) == run / "checkpoints" / "last.pt"
    (run / "backbone.safetensors").write_bytes(b"x")
    assert resolve_source(run) == run / "backbone.safetensors"  # the export wins over the training checkpoint


def test_resolve_source_refuses_a_timm_tag_and_a_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="timm tag"):
        resolve_source("timm:regnety_002")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_source(f"dino:{tmp_path / 'missing.pth'}")


def test_openseer_sources_are_run_dirs_exports_and_training_checkpoints(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(b"x")
    other = tmp_path / "dino.pth"
    other.write_bytes(b"x")
    assert is_openseer_source(tmp_path) and is_openseer_source(last)
    assert not is_openseer_source(other) and not is_openseer_source("timm:regnety_002")
    assert not is_openseer_source(f"vissl:{last}")  # a FORMAT: prefix sends it to that converter
