import os
import pickle

import pytest
import timm
import torch
from safetensors.torch import load_file

from openseer.checkpoint import (
    CheckpointError,
    atomic_write,
    export_backbone,
    load_backbone,
    load_checkpoint,
    save_checkpoint,
)


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    torch.save({"x": Evil()}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError, match="refusing to load|cannot read"):
            load_checkpoint(p)


def test_truncated_empty_missing_and_foreign_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.zeros(1000)}})
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "trunc.pt")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not an openseer checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_exported_backbone_loads_into_plain_timm(tmp_path):
    model = timm.create_model("regnetx_002", num_classes=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    export_backbone(tmp_path, model, {"timm_name": "regnetx_002"})
    plain = timm.create_model("regnetx_002", num_classes=0)
    plain.load_state_dict(load_file(tmp_path / "backbone.safetensors"))  # strict: every key fits
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain.eval()(x), model.eval()(x))
    rebuilt, _ = load_backbone(tmp_path)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_backbone_mismatch_is_a_clear_error(tmp_path):
    export_backbone(tmp_path, timm.create_model("regnetx_002", num_classes=0), {"timm_name": "regnety_002"})
    with pytest.raises(CheckpointError, match="do not fit backbone"):
        load_backbone(tmp_path)
    with pytest.raises(CheckpointError, match="neither"):
        load_backbone(tmp_path / "nothing_here" if (tmp_path / "x").mkdir() else tmp_path / "x")
