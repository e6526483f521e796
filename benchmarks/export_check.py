"""Export check: max |PyTorch - ONNX Runtime| and |PyTorch - TorchScript| of the pooled features, and file sizes.

    PYTHONPATH=. .venv/bin/python benchmarks/export_check.py [--source RUN_DIR_OR_SOURCE ...] [--size 224]

Without --source, randomly initialised timm backbones (regnety_004, resnet50) are exported from a scratch run
directory (timm's init, batch-norm statistics randomised so that every layer matters). Every format goes through
``openseer.weights.export.export_run`` (the `openseer export` code path); the exported model is run at a batch
size other than the one it was traced with (dynamic batch). Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openseer.checkpoint import export_backbone  # noqa: E402
from openseer.models.backbone import create_backbone_from_spec  # noqa: E402
from openseer.weights.export import export_run, torchvision_model  # noqa: E402
from openseer.weights.sources import backbone_from_source  # noqa: E402


def random_run(root: Path, name: str, seed: int) -> Path:
    model = create_backbone_from_spec({"timm_name": name, "zero_init_last": False})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif key.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    run = root / name
    export_backbone(run, model.state_dict(), {"timm_name": name})
    return run


def size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


def check(source: str, root: Path, size: int, batch: int) -> list[str]:
    import onnxruntime as ort

    backbone, imported = backbone_from_source(source, log=lambda s: None)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = backbone(x)
    label = imported.spec.get("timm_name", "regnet_cfg") if imported.spec else source
    rows = []
    out = root / f"{label}.export"
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    onnx_path = export_run(source, "onnx", out / "backbone.onnx", image_size=size)
    onnx_s = time.perf_counter() - started
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    rows.append(_row(label, "onnx", torch.from_numpy(got), ref, onnx_path, onnx_s))

    started = time.perf_counter()
    ts_path = export_run(source, "torchscript", out / "backbone.pt", image_size=size)
    ts_s = time.perf_counter() - started
    scripted = torch.jit.load(str(ts_path))
    with torch.no_grad():
        rows.append(_row(label, "torchscript", scripted(x), ref, ts_path, ts_s))

    st_path = export_run(source, "safetensors", out / "backbone.safetensors")
    rebuilt, _ = backbone_from_source(st_path, log=lambda s: None)
    with torch.no_grad():
        rows.append(_row(label, "safetensors", rebuilt(x), ref, st_path, 0.0))
    try:
        tv_path = export_run(source, "torchvision", out / "backbone.pth")
        tv = torchvision_model(imported.spec)
        tv.load_state_dict(torch.load(tv_path, weights_only=True))
        with torch.no_grad():
            rows.append(_row(label, "torchvision", tv.eval()(x), ref, tv_path, 0.0))
    except Exception as e:  # noqa: BLE001 - an architecture torchvision does not have
        rows.append(f"| {label} | torchvision | n/a ({str(e).splitlines()[0][:60]}) | | | |")
    return rows


def _row(label: str, fmt: str, got: torch.Tensor, ref: torch.Tensor, path: Path, seconds: float) -> str:
    diff = (got - ref).abs().max().item()
    rel = diff / ref.abs().max().item()
    return f"| {label} | {fmt} | {diff:.2e} | {rel:.1e} | {size_mb(path):.1f} | {seconds:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", help="run dir or SOURCE (repeatable)")
    parser.add_argument("--models", default="regnety_004,resnet50", help="random timm backbones when no --source")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=3, help="batch size of the check (traced with 2)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = args.source or [str(random_run(root, m, i)) for i, m in enumerate(args.models.split(","))]
        print(f"pooled features at {args.size} px, batch {args.batch}; torch {torch.__version__}")
        print("| backbone | format | max abs diff | / max abs feature | file MB | export s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for source in sources:
            for row in check(source, root, args.size, args.batch):
                print(row, flush=True)


if __name__ == "__main__":
    main()
