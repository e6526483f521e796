"""Checkpoints: atomic writes, safe loading, backbone export.

* A training checkpoint (``RUN_DIR/checkpoints/last.pt`` and ``step_XXXXXXX.pt``) holds everything needed to
  continue: model (with the SwAV queue of every process), optimizer, gradient scaler, step/epoch position, RNG
  states, the config and the skipped-image log. It is written to a temporary file in the same folder,
  fsync'ed and renamed, so a crash mid-write never leaves a torn ``last.pt``.
* With FSDP (or ``parallel.checkpoint_format=sharded``) every process writes its shard instead, with
  torch.distributed.checkpoint (see "sharded checkpoints" below), resumable on any number of processes.
* Loading always uses ``torch.load(weights_only=True)``: a checkpoint from an untrusted source cannot run
  code; one that needs arbitrary unpickling is rejected with a clear error.
* The trained backbone is exported as ``backbone.safetensors`` plus ``backbone.json`` (how to rebuild it with
  timm), so it loads into a plain timm model: ``timm.create_model(name, num_classes=0)`` then
  ``load_state_dict(safetensors.torch.load_file(...))``.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_SPEC = "backbone.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, reported as one line."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write_fn) -> None:
    """Write ``path`` via ``write_fn(tmp_path)`` then fsync + rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; every failure becomes one clear CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (zero bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {path}: it needs code execution to unpickle, which "
            f"weights_only=True forbids ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an openseer checkpoint (holds {type(state).__name__})")
    return state


def export_backbone(run_dir: str | Path, backbone: nn.Module, spec: dict[str, Any]) -> Path:
    """Write the backbone's weights (safetensors) and its timm spec into ``run_dir``."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write(run_dir / BACKBONE_WEIGHTS, lambda tmp: save_file(tensors, tmp))
    atomic_write(run_dir / BACKBONE_SPEC, lambda tmp: Path(tmp).write_text(json.dumps(spec, indent=2)))
    return run_dir / BACKBONE_WEIGHTS


def _backbone_state_from_training(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    model = state.get("model")
    if not isinstance(model, dict):
        raise CheckpointError("checkpoint has no 'model' state dict")
    prefix = "backbone."
    out = {k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)}
    if not out:
        raise CheckpointError("checkpoint's model has no backbone.* weights")
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A run dir -> its exported backbone if present, else its last training checkpoint; a file -> itself."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / BACKBONE_WEIGHTS, path / "checkpoints" / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} holds neither {BACKBONE_WEIGHTS} nor checkpoints/last.pt")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def _read_backbone(path: Path, with_weights: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(spec, config, weights) of a resolved backbone file; weights only when asked for."""
    config: dict[str, Any] = {}
    weights: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        spec_path = path.with_name(BACKBONE_SPEC)
        if not spec_path.is_file():
            raise CheckpointError(f"{path} has no {BACKBONE_SPEC} beside it saying which backbone it is")
        spec = json.loads(spec_path.read_text())
        if with_weights:
            try:
                weights = load_file(str(path))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"cannot read {path}: {e}") from None
        cfg_path = path.with_name("config.yaml")
        if cfg_path.is_file():
            import yaml

            config = yaml.safe_load(cfg_path.read_text()) or {}
    else:
        state = load_checkpoint(path)
        config = state.get("config") or {}
        spec = state.get("backbone_spec")
        if not isinstance(spec, dict):
            raise CheckpointError(f"{path} does not say which backbone it holds (no backbone_spec)")
        if with_weights:
            weights = _backbone_state_from_training(state)
    return spec, config, weights


def read_backbone_spec(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The timm spec of the backbone a run dir, ``backbone.safetensors`` or checkpoint holds, and the run's
    config dict (empty if unknown), without building the backbone."""
    spec, config, _ = _read_backbone(resolve_checkpoint(path), with_weights=False)
    return spec, config


def load_backbone(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the pretrained backbone from a run dir, ``backbone.safetensors`` or a training checkpoint.

    Returns the backbone (eval mode, CPU) and the run's config dict (empty if unknown).
    """
    from openseer.models.backbone import create_backbone_from_spec

    path = resolve_checkpoint(path)
    spec, config, weights = _read_backbone(path, with_weights=True)
    backbone = create_backbone_from_spec(spec)
    try:
        missing, unexpected = backbone.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(
            f"{path}: weights do not fit backbone {spec}: {str(e).splitlines()[1:2]}"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit backbone {spec}: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    return backbone.eval(), config


# ---- sharded checkpoints (torch.distributed.checkpoint) ----------------------------------------------------
# RUN_DIR/checkpoints/step_XXXXXXXX/ holds one DCP shard file per process plus ``meta.pt`` (step, RNG, config,
# SwAV queue ...: small, written by rank 0, loaded with weights_only=True); ``LATEST`` names the newest. A
# directory is written under a temporary name and renamed when every process has finished, so LATEST never
# points at a partial checkpoint. DCP reshards on load: a checkpoint of N processes resumes on M.
LATEST = "LATEST"
META = "meta.pt"


def _barrier() -> None:
    from openseer import dist

    if dist.world_size() > 1:
        torch.distributed.barrier()


def _model_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    # the SwAV queue is per process: it travels in meta.pt as one global queue instead
    model_sd = {k: v for k, v in model_sd.items() if not k.endswith("_extra_state")}
    return {"model": model_sd, "optim": optim_sd}


def save_sharded_checkpoint(
    ckpt_dir: str | Path, name: str, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]
) -> Path:
    """Every process calls this; writes ``ckpt_dir/name/`` and points ``LATEST`` at it."""
    import shutil

    import torch.distributed.checkpoint as dcp

    from openseer import dist

    ckpt_dir = Path(ckpt_dir)
    target, tmp = ckpt_dir / name, ckpt_dir / f".{name}.partial"
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    dcp.save(_model_optim_state(model, optimizer), checkpoint_id=str(tmp))
    if dist.is_main():
        save_checkpoint(tmp / META, meta)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        _fsync_dir(ckpt_dir)
        atomic_write(ckpt_dir / LATEST, lambda t: Path(t).write_text(name + "\n"))
    _barrier()
    return target


def latest_sharded_checkpoint(ckpt_dir: str | Path) -> Path | None:
    pointer = Path(ckpt_dir) / LATEST
    if not pointer.is_file():
        return None
    path = Path(ckpt_dir) / pointer.read_text().strip()
    if not (path / META).is_file():
        raise CheckpointError(f"{pointer} points at {path}, which is not a complete sharded checkpoint")
    return path


def load_sharded_meta(path: str | Path) -> dict[str, Any]:
    return load_checkpoint(Path(path) / META)


def _materialize_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Create zero momentum buffers for parameters that have none yet, so that DCP can load into them.

    For SGD/LARS a zero buffer behaves exactly like a missing one (the first update sets buf = d either way).
    """
    for group in optimizer.param_groups:
        if not group.get("momentum"):
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def load_sharded_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load model and optimizer from a sharded checkpoint written by any number of processes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import set_state_dict

    _materialize_momentum(optimizer)
    state = _model_optim_state(model, optimizer)
    missing = [k for k in state["model"] if k not in _checkpoint_keys(path, "model.")]
    if missing:
        raise CheckpointError(f"{path} lacks model weights {missing[:3]} (a different model?)")
    # buffers of parameters never stepped (e.g. frozen prototypes) are absent from the checkpoint: keep zeros
    dcp.load(state, checkpoint_id=str(path), planner=DefaultLoadPlanner(allow_partial_load=True))
    extra = {k: v for k, v in model.state_dict().items() if k.endswith("_extra_state")}  # e.g. the SwAV queue
    set_state_dict(
        model, optimizer, model_state_dict={**state["model"], **extra}, optim_state_dict=state["optim"]
    )


def _checkpoint_keys(path: str | Path, prefix: str) -> set[str]:
    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(str(path)).read_metadata()
    return {k[len(prefix) :] for k in md.state_dict_metadata if k.startswith(prefix)}


def full_backbone_state(method: nn.Module, submodule: str = "backbone") -> dict[str, torch.Tensor]:
    """The full (unsharded) weights on CPU of the method's exported backbone (``method.exported_backbone``,
    e.g. "teacher.backbone" for DINO); with FSDP every process must call this."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(method, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    prefix = submodule + "."
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix) and torch.is_tensor(v)}


def export_backbone_state(
    run_dir: str | Path, tensors: dict[str, torch.Tensor], spec: dict[str, Any]
) -> Path:
    """Like :func:`export_backbone`, from a state dict (e.g. :func:`full_backbone_state`)."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(run_dir / BACKBONE_WEIGHTS, lambda tmp: save_file(tensors, tmp))
    atomic_write(run_dir / BACKBONE_SPEC, lambda tmp: Path(tmp).write_text(json.dumps(spec, indent=2)))
    return run_dir / BACKBONE_WEIGHTS
