"""Checkpoints: atomic writes, safe loading, backbone export.

* A training checkpoint (``RUN_DIR/checkpoints/last.pt`` and ``step_XXXXXXX.pt``) holds everything needed to
  continue: model (with the SwAV queue of every process), optimizer, gradient scaler, step/epoch position, RNG
  states, the config and the skipped-image log. It is written to a temporary file in the same folder,
  fsync'ed and renamed, so a crash mid-write never leaves a torn ``last.pt``.
* With FSDP (or ``parallel.checkpoint_format=sharded``) every process writes its shard instead, with
  torch.distributed.checkpoint (see "sharded checkpoints" below), resumable on any number of processes.
* A write that fails (disk full, I/O error, read-only folder) raises :class:`CheckpointWriteError`, one line
  naming the file and the errno; the previous file of that name is left intact and no temporary file stays.
* :func:`checkpoint_problem` and :func:`sharded_checkpoint_problem` say, without loading any weights into a
  model, why a checkpoint cannot be resumed from (truncated, empty, a shard missing ...), so that resuming can
  fall back to the newest intact one (``openseer.run_state.find_resume_state``).
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
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from openseer import dist
from openseer.errors import CheckpointError, CheckpointWriteError
from openseer.io import BACKBONE_SPEC, BACKBONE_WEIGHTS, atomic_write, atomic_write_json, fsync_dir, os_error_of
from openseer.models.backbone import create_backbone_from_spec


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` with torch.save; a failed write raises :class:`CheckpointWriteError`."""

    def write(tmp: str) -> None:
        # through a Python file object, so that ENOSPC/EIO surface as OSError with their errno (torch.save to a
        # path reports them as a RuntimeError of its C++ writer, without the errno)
        with open(tmp, "wb") as f:
            torch.save(state, f)

    atomic_write(path, write)


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
            f"refusing to load {path}: it needs code execution to unpickle, which weights_only=True forbids ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an openseer checkpoint (holds {type(state).__name__})")
    return state


def _backbone_state_from_training(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    model = state.get("model")
    if not isinstance(model, dict):
        raise CheckpointError("checkpoint has no 'model' state dict")
    spec = state.get("backbone_spec") if isinstance(state.get("backbone_spec"), dict) else {}
    prefix = str(spec.get("exported", "backbone")) + "."  # the method's exported backbone (DINO: the teacher)
    out = {k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)}
    if not out:
        raise CheckpointError(f"checkpoint's model has no {prefix}* weights")
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A run dir -> its exported backbone if present, else its last training checkpoint; a file -> itself.

    Only paths: a SOURCE such as ``vissl:FILE`` or a ``timm:`` tag goes through
    :func:`openseer.weights.load.resolve_source`.
    """
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


def is_training_checkpoint_file(path: str | Path) -> bool:
    """An openseer training checkpoint (``.pt`` with a backbone_spec); only the file's name is looked at."""
    p = Path(str(path))
    return p.is_file() and p.suffix == ".pt" and (p.parent.name == "checkpoints" or p.name == "last.pt")


def read_backbone_spec(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The timm spec of the backbone a run dir, ``backbone.safetensors`` or checkpoint holds, and the run's
    config dict (empty if unknown), without building the backbone (any SOURCE: openseer.weights.load)."""
    spec, config, _ = _read_backbone(resolve_checkpoint(path), with_weights=False)
    return spec, config


def load_backbone(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the pretrained backbone from a run dir, ``backbone.safetensors`` or a training checkpoint.

    Returns the backbone (eval mode, CPU) and the run's config dict (empty if unknown). Any other SOURCE
    (``timm:`` tags, VISSL / SwAV / DINO / torchvision files) goes through
    :func:`openseer.weights.load.load_backbone`, which calls this one for openseer's own files.
    """
    path = resolve_checkpoint(path)
    spec, config, weights = _read_backbone(path, with_weights=True)
    backbone = create_backbone_from_spec(spec)
    try:
        missing, unexpected = backbone.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit backbone {spec}: {str(e).splitlines()[1:2]}") from None
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
    if dist.world_size() > 1:
        torch.distributed.barrier()


def _model_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    # the SwAV queue is per process: it travels in meta.pt as one global queue instead
    model_sd = {k: v for k, v in model_sd.items() if not k.endswith("_extra_state")}
    return {"model": model_sd, "optim": optim_sd}


def save_sharded_checkpoint(
    ckpt_dir: str | Path, name: str, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]
) -> Path:
    """Every process calls this; writes ``ckpt_dir/name/`` and points ``LATEST`` at it."""
    ckpt_dir = Path(ckpt_dir)
    target, tmp = ckpt_dir / name, ckpt_dir / f".{name}.partial"
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    try:
        dcp.save(_model_optim_state(model, optimizer), checkpoint_id=str(tmp))
    except Exception as e:  # DCP gathers each process's failure into one CheckpointException
        cause = os_error_of(e)
        if cause is not None:
            raise CheckpointWriteError(tmp, cause) from None
        raise CheckpointError(f"cannot write sharded checkpoint {tmp}: {_first_line(e)}") from None
    if dist.is_main():
        save_checkpoint(tmp / META, meta)
        try:
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except OSError as e:
            raise CheckpointWriteError(target, e) from None
        fsync_dir(ckpt_dir)
        atomic_write(ckpt_dir / LATEST, lambda t: Path(t).write_text(name + "\n"))
    _barrier()
    return target


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def sharded_checkpoint_problem(path: str | Path) -> str | None:
    """Why the sharded checkpoint directory ``path`` cannot be resumed from, or None when it looks intact.

    Checks, without loading weights: ``meta.pt`` loads, DCP's ``.metadata`` reads, and every shard file the
    metadata names exists and is long enough for the data it should hold (a missing or cut shard).
    """
    path = Path(path)
    if not path.is_dir():
        return f"{path} does not exist"
    try:
        load_checkpoint(path / META)
    except CheckpointError as e:
        return str(e)
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # missing or damaged .metadata: pickle, EOF, OS errors
        return f"cannot read {path / '.metadata'}: {_first_line(e)}"
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        name = getattr(info, "relative_path", None)
        if name is not None:
            needed[name] = max(needed.get(name, 0), int(info.offset) + int(info.length))
    for name, size in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            return f"shard {shard} is missing"
        if shard.stat().st_size < size:
            return f"shard {shard} is cut short ({shard.stat().st_size} of at least {size} bytes)"
    return None


def latest_sharded_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The directory ``LATEST`` points at (None without a pointer); an incomplete one is a CheckpointError."""
    pointer = Path(ckpt_dir) / LATEST
    if not pointer.is_file():
        return None
    try:
        path = Path(ckpt_dir) / pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {pointer}: {_first_line(e)}") from None
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
    _materialize_momentum(optimizer)
    state = _model_optim_state(model, optimizer)
    missing = [k for k in state["model"] if k not in _checkpoint_keys(path, "model.")]
    if missing:
        raise CheckpointError(f"{path} lacks model weights {missing[:3]} (a different model?)")
    # buffers of parameters never stepped (e.g. frozen prototypes) are absent from the checkpoint: keep zeros
    dcp.load(state, checkpoint_id=str(path), planner=DefaultLoadPlanner(allow_partial_load=True))
    extra = {k: v for k, v in model.state_dict().items() if k.endswith("_extra_state")}  # e.g. the SwAV queue
    set_state_dict(model, optimizer, model_state_dict={**state["model"], **extra}, optim_state_dict=state["optim"])


def _checkpoint_keys(path: str | Path, prefix: str) -> set[str]:
    md = FileSystemReader(str(path)).read_metadata()
    return {k[len(prefix) :] for k in md.state_dict_metadata if k.startswith(prefix)}


def full_backbone_state(method: nn.Module, submodule: str = "backbone") -> dict[str, torch.Tensor]:
    """The full (unsharded) weights on CPU of the method's exported backbone (``method.exported_backbone``,
    e.g. "teacher.backbone" for DINO); with FSDP every process must call this."""
    sd = get_model_state_dict(method, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    prefix = submodule + "."
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix) and torch.is_tensor(v)}


def export_backbone(run_dir: str | Path, weights: nn.Module | dict[str, torch.Tensor], spec: dict[str, Any]) -> Path:
    """Write a backbone's weights (safetensors) and its timm spec into ``run_dir``; returns the weights file.

    ``weights`` is the backbone module or its state dict (e.g. :func:`full_backbone_state` of a sharded model).
    """
    run_dir = Path(run_dir)
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(run_dir / BACKBONE_WEIGHTS, lambda tmp: save_file(tensors, tmp))
    atomic_write_json(run_dir / BACKBONE_SPEC, spec)
    return run_dir / BACKBONE_WEIGHTS
