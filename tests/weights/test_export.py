"""Exports reproduce the backbone's outputs: timm, torchvision, ONNX (onnxruntime) and TorchScript, any batch."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from openseer.checkpoint import export_backbone
from openseer.weights import WeightsError
from openseer.weights.export import export_run, torchvision_model
from openseer.weights.sources import backbone_from_source
from tests.weights import foreign

TOL = {"rtol": 1e-4, "atol": 1e-5}  # float32 kernels of another runtime; measured max abs diff is ~1e-7


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    backbone = foreign.randomise(
        timm.models.regnet.RegNet(timm.models.regnet.RegNetCfg(**foreign.TINY_REGNET), num_classes=0), 12
    )
    export_backbone(run, backbone.state_dict(), foreign.TINY_REGNET_SPEC)
    (run / "config.yaml").write_text("aug:\n  global_size: 32\n")
    return run


def _reference(run_dir, x):
    backbone, _ = backbone_from_source(run_dir)
    with torch.no_grad():
        return backbone(x)


def test_torchvision_export_loads_into_torchvision(run_dir, tmp_path):
    out = export_run(run_dir, "torchvision", tmp_path / "tv.pth")
    model = torchvision_model(foreign.TINY_REGNET_SPEC)
    model.load_state_dict(torch.load(out, weights_only=True))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), _reference(run_dir, x), **TOL)
    assert "BlockParams" in json.loads(out.with_suffix(".json").read_text())["torchvision"]


def test_onnx_export_matches_with_dynamic_batch(run_dir, tmp_path):
    pytest.importorskip("onnxscript")  # the torch.export-based ONNX exporter
    ort = pytest.importorskip("onnxruntime")
    out = export_run(run_dir, "onnx", tmp_path / "b.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # traced with batch 2
        x = torch.randn(batch, 3, 32, 32)
        (got,) = session.run(None, {"images": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), _reference(run_dir, x), **TOL)


def test_torchscript_export_matches_with_dynamic_batch(run_dir, tmp_path):
    out = export_run(run_dir, "torchscript", tmp_path / "b.pt")
    with pytest.warns(FutureWarning) if torch.__version__ >= "2.10" else _nothing():
        scripted = torch.jit.load(str(out))
    for batch in (1, 6):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), _reference(run_dir, x), **TOL)


def test_timm_export_loads_with_timm_local_dir(tmp_path):
    model = foreign.randomise(timm.create_model("regnetx_002", num_classes=0), 13)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    out = export_run(tmp_path / "w.pth", "timm", tmp_path / "timm_out")
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_safetensors_export_round_trips(run_dir, tmp_path):
    out = export_run(run_dir, "safetensors", tmp_path / "backbone.safetensors")
    assert json.loads((tmp_path / "backbone.json").read_text()) == foreign.TINY_REGNET_SPEC
    x = torch.randn(2, 3, 32, 32)
    backbone, _ = backbone_from_source(out)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), _reference(run_dir, x))


def test_export_refuses_what_it_cannot_write(run_dir, tmp_path):
    with pytest.raises(WeightsError, match="unknown export format"):
        export_run(run_dir, "tflite", tmp_path / "x")
    with pytest.raises(WeightsError, match="timm-named architecture"):
        export_run(run_dir, "timm", tmp_path / "t")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_detectron2_export_uses_pycls_names(run_dir, tmp_path):
    out = export_run(run_dir, "detectron2", tmp_path / "d2.pth")
    model = torch.load(out, weights_only=True)["model"]
    assert "backbone.bottom_up.stem.conv.weight" in model
    for key in (
        "s1.b1.proj.weight",
        "s1.b1.bn.running_mean",
        "s1.b1.f.a.weight",
        "s1.b1.f.a_bn.bias",
        "s2.b1.f.b.weight",
        "s4.b1.f.se.f_ex.0.bias",
        "s4.b1.f.se.f_ex.2.weight",
        "s3.b1.f.c.weight",
        "s3.b1.f.c_bn.running_var",
    ):
        assert f"backbone.bottom_up.{key}" in model, key
    backbone, _ = backbone_from_source(run_dir)
    torch.testing.assert_close(model["backbone.bottom_up.s4.b1.f.c_bn.weight"], backbone.s4.b1.conv3.bn.weight)
