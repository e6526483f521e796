"""Process-group helpers. Every collective is a no-op at world size 1, so all code runs in one CPU process.

Launch with ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) on each of 1..N nodes, or
with ``srun``, one task per GPU (SLURM_PROCID/NTASKS/LOCALID are mapped); ``init_distributed`` picks nccl on
GPUs and gloo on CPU. See docs/distributed.md for the sbatch recipe.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (no-op in one process). Returns ``t``."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _gather_objects(obj: Any) -> list[Any]:
    if world_size() == 1:
        return [obj]
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """The first process's ``obj`` on every process (the identity in one process)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def merge_dicts(d: dict[str, Any]) -> dict[str, Any]:
    """The union of every process's dict (collective); on a shared key the lowest rank wins."""
    merged: dict[str, Any] = {}
    for part in reversed(_gather_objects(dict(d))):
        merged.update(part)
    return dict(sorted(merged.items()))


def sum_counts(counts: dict[str, int]) -> dict[str, int]:
    """Per-key sums of every process's counters (collective), sorted by key."""
    parts = _gather_objects(dict(counts))
    total: dict[str, int] = {}
    for part in parts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + int(n)
    return dict(sorted(total.items()))


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every process along dim 0 (no gradient), in rank order."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def env_from_slurm() -> bool:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK from SLURM when ``srun`` started one task per GPU without torchrun.

    MASTER_ADDR/MASTER_PORT must be exported by the batch script (docs/distributed.md). Returns True if set.
    """
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return False
    if int(os.environ["SLURM_NTASKS"]) <= 1:
        return False
    if "MASTER_ADDR" not in os.environ:
        raise RuntimeError(
            "launched by srun with several tasks but MASTER_ADDR is not set; export MASTER_ADDR (the first "
            "node: scontrol show hostnames $SLURM_JOB_NODELIST | head -n1) and MASTER_PORT, or use torchrun"
        )
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    return True


def _restart_store():
    """Under torchrun's agent store, a store whose keys are prefixed by the restart count, else None.

    The agent's store outlives a worker group: after ``--max-restarts`` restarts it, the new processes would
    read the old processes' gloo addresses (same keys) and fail with "connectFullMesh ... Connection refused".
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_ADDR" not in os.environ:
        return None

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        int(os.environ["WORLD_SIZE"]),
        is_master=False,
        timeout=timedelta(minutes=30),
    )
    return dist.PrefixStore(f"/openseer/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def init_distributed(device: str = "auto") -> torch.device:
    """Initialise the default process group when launched by torchrun (or srun); return this process's device.

    The backend is nccl on GPUs and gloo on CPU; one process per GPU, on GPU ``LOCAL_RANK``.
    """
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    env_from_slurm()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_initialized():
        backend = "nccl" if want_cuda else "gloo"
        store = _restart_store()
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
    if want_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("train.device asks for cuda but torch.cuda.is_available() is False")
        index = local_rank if device in ("auto", "cuda") else int(device.split(":")[1])
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")
