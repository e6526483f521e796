"""Export a pretrained backbone (from a run directory or any SOURCE) for use elsewhere.

==============  ====================================================================================================
format          writes
==============  ====================================================================================================
safetensors     ``OUT`` (``.safetensors``) + ``backbone.json`` beside it: openseer's own export, loadable into timm
timm            folder ``OUT/`` with ``model.safetensors`` + ``config.json`` (timm's ``save_for_hf``):
                ``timm.create_model("local-dir:OUT", pretrained=True)`` or upload it to the Hugging Face hub
torchvision     ``OUT`` (``.pth``), a state dict under torchvision's names for ``torchvision.models.<arch>()``
                (ResNets by name, RegNets by their design parameters; the classifier is not included)
onnx            ``OUT`` (``.onnx``): images ``(batch, 3, H, W)`` -> pooled features ``(batch, C)``, dynamic batch,
                exported with ``torch.onnx.export`` and checked with ``onnx.checker``
torchscript     ``OUT`` (``.pt``): ``torch.jit.trace`` of the backbone, dynamic batch; ``torch.jit.load(OUT)``
detectron2      ``OUT`` (``.pth``): ``{"model": ...}`` under detectron2's RegNet names (pycls: ``f.a``, ``f.a_bn``,
                ``f.se.f_ex.0`` ...) with the ``backbone.bottom_up.`` prefix of its FPN models, for
                ``MODEL.WEIGHTS`` (RegNets only; docs/weights.md)
==============  ====================================================================================================

Every file is written atomically (temporary name, then rename). The exported model computes exactly the
backbone's ``forward`` (pooled features); ``tests/weights/test_export.py`` and ``benchmarks/export_check.py``
measure the differences.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import save_file
from timm.models import save_for_hf
from timm.models.regnet import model_cfgs
from torch import nn
from torch.export import Dim
from torchvision.models.regnet import BlockParams, RegNet

from openseer.io import BACKBONE_SPEC, atomic_write
from openseer.weights.mapping import Imported, KeyTable, WeightsError
from openseer.weights.regnet_keys import export_table
from openseer.weights.sources import backbone_from_source

FORMATS = ("safetensors", "timm", "torchvision", "onnx", "torchscript", "detectron2")


def export_run(source: str | Path, fmt: str, out: str | Path, image_size: int = 0, opset: int | None = None) -> Path:
    """Write the backbone of ``source`` (a run directory or any SOURCE) in ``fmt`` to ``out``; returns ``out``.

    ``image_size`` is the side of the example input used to trace ONNX/TorchScript (default: the run's
    evaluation size, else 224); convnets accept other sizes afterwards.
    """
    if fmt not in FORMATS:
        raise WeightsError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    backbone, imported = backbone_from_source(source, log=lambda s: None)
    out = Path(out)
    size = image_size or _run_image_size(imported)
    if fmt == "safetensors":
        return export_safetensors(backbone, imported.spec or {}, out)
    if fmt == "timm":
        return export_timm(backbone, imported, out, size)
    if fmt == "torchvision":
        return export_torchvision(backbone, imported.spec or {}, out)
    if fmt == "detectron2":
        return export_detectron2(backbone, imported.spec or {}, out)
    example = torch.randn(2, 3, size, size)
    if fmt == "onnx":
        return export_onnx(backbone, example, out, opset)
    return export_torchscript(backbone, example, out)


def _run_image_size(imported: Imported) -> int:
    cfg = imported.config or {}
    size = (cfg.get("eval") or {}).get("image_size") or (cfg.get("aug") or {}).get("global_size")
    return int(size or 224)


# ---- safetensors / timm ------------------------------------------------------------------------------------
def export_safetensors(backbone: nn.Module, spec: dict[str, Any], out: Path) -> Path:
    if out.suffix != ".safetensors":
        raise WeightsError(f"--out {out}: a safetensors export needs a .safetensors file name")
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write(out, lambda tmp: save_file(tensors, tmp))
    spec_path = out.with_name(BACKBONE_SPEC) if out.name == "backbone.safetensors" else out.with_suffix(".json")
    atomic_write(spec_path, lambda tmp: Path(tmp).write_text(json.dumps(spec, indent=2)))
    return out


def export_timm(backbone: nn.Module, imported: Imported, out: Path, image_size: int) -> Path:
    """timm's own hub folder (``save_for_hf``): ``timm.create_model("local-dir:OUT", pretrained=True)``."""
    spec = imported.spec or {}
    if "timm_name" not in spec:
        raise WeightsError(
            f"the timm format needs a timm-named architecture; {spec} has none (use --format safetensors, which "
            f"records the RegNet parameters)"
        )
    cfg = imported.config or {}
    aug = cfg.get("aug") or {}
    data_config = {"input_size": (3, image_size, image_size)}
    if aug.get("mean") and aug.get("std"):
        data_config.update(mean=tuple(aug["mean"]), std=tuple(aug["std"]))
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise WeightsError(f"--out {out} is a non-empty folder that is not a timm export; choose another")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_for_hf(backbone, str(tmp), safe_serialization=True, data_config=data_config)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---- torchvision ---------------------------------------------------------------------------------------------
TIMM_TO_TORCHVISION_REGNET = export_table("torchvision", "timm RegNet -> torchvision")
TIMM_TO_TORCHVISION_RESNET = KeyTable("timm ResNet -> torchvision", [(r"(conv1|bn1|layer[1-4])\.", r"\1.")])


def regnet_params(spec: dict[str, Any]) -> dict[str, Any] | None:
    """(depth, w0, wa, wm, group_size, se_ratio) of a RegNet spec, timm-named or given by parameters."""
    if "regnet_cfg" in spec:
        return dict(spec["regnet_cfg"])
    name = spec.get("timm_name", "")
    if name.startswith(("regnetx_", "regnety_")):
        cfg = model_cfgs.get(name)
        if cfg is not None:
            return {k: getattr(cfg, k) for k in ("depth", "w0", "wa", "wm", "group_size", "se_ratio")}
    return None


def torchvision_model(spec: dict[str, Any]) -> nn.Module:
    """The torchvision model (classifier replaced by Identity) with the architecture of ``spec``."""
    params = regnet_params(spec)
    name = spec.get("timm_name", "")
    if params is not None:
        block_params = BlockParams.from_init_params(
            depth=params["depth"],
            w_0=params["w0"],
            w_a=params["wa"],
            w_m=params["wm"],
            group_width=params["group_size"],
            se_ratio=params.get("se_ratio") or None,
        )
        model = RegNet(block_params)
    elif name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        model = getattr(torchvision.models, name)()
    else:
        raise WeightsError(
            f"no torchvision architecture for {spec}: the torchvision export covers RegNets and resnet18/34/50/101/152"
        )
    model.fc = nn.Identity()
    return model


def export_torchvision(backbone: nn.Module, spec: dict[str, Any], out: Path) -> Path:
    table = TIMM_TO_TORCHVISION_REGNET if regnet_params(spec) is not None else TIMM_TO_TORCHVISION_RESNET
    state, _ = table.apply(dict(backbone.state_dict()), f"backbone {spec}")
    model = torchvision_model(spec)
    model.load_state_dict(state, strict=True)  # proves the names and shapes fit torchvision's model
    atomic_write(out, lambda tmp: torch.save(state, tmp))
    atomic_write(
        out.with_suffix(".json"),
        lambda tmp: Path(tmp).write_text(json.dumps({"spec": spec, "torchvision": _tv_recipe(spec)}, indent=2)),
    )
    return out


def _tv_recipe(spec: dict[str, Any]) -> str:
    params = regnet_params(spec)
    if params is None:
        return f"torchvision.models.{spec['timm_name']}(); model.fc = torch.nn.Identity()"
    return (
        "torchvision.models.regnet.RegNet(torchvision.models.regnet.BlockParams.from_init_params("
        f"depth={params['depth']}, w_0={params['w0']}, w_a={params['wa']}, w_m={params['wm']}, "
        f"group_width={params['group_size']}, se_ratio={params.get('se_ratio') or None})); "
        "model.fc = torch.nn.Identity()"
    )


# ---- detectron2 ----------------------------------------------------------------------------------------------
TIMM_TO_DETECTRON2_REGNET = export_table("detectron2", "timm RegNet -> detectron2 (pycls names)")


def export_detectron2(
    backbone: nn.Module, spec: dict[str, Any], out: Path, prefix: str = "backbone.bottom_up."
) -> Path:
    if regnet_params(spec) is None:
        raise WeightsError(f"the detectron2 export covers RegNets; {spec} is not one (use torchvision for ResNets)")
    state, _ = TIMM_TO_DETECTRON2_REGNET.apply(dict(backbone.state_dict()), f"backbone {spec}")
    state = {prefix + k: v.detach().cpu() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    atomic_write(out, lambda tmp: torch.save({"model": state, "__author__": "openseer", "spec": spec}, tmp))
    return out


# ---- onnx / torchscript ----------------------------------------------------------------------------------------
def export_onnx(backbone: nn.Module, example: torch.Tensor, out: Path, opset: int | None = None) -> Path:
    """``torch.onnx.export`` (the torch.export-based exporter) with a dynamic batch dimension."""
    import onnx

    backbone = backbone.eval().float()
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}

    def write(tmp: str) -> None:
        # the exporter reports its progress on stdout: keep the command's output to its one result line
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                backbone,
                (example,),
                input_names=["images"],
                output_names=["features"],
                dynamic_shapes=({0: Dim("batch", min=1, max=65536)},),
                dynamo=True,
                verbose=False,
                **kwargs,
            )
        program.save(tmp, external_data=False)
        onnx.checker.check_model(tmp)

    atomic_write(out, write)
    return out


def export_torchscript(backbone: nn.Module, example: torch.Tensor, out: Path) -> Path:
    """``torch.jit.trace`` of the backbone in eval mode; the batch dimension stays free."""
    backbone = backbone.eval().float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(backbone, example, check_trace=False)
        atomic_write(out, lambda tmp: torch.jit.save(traced, tmp))
    return out
