"""Helpers for multi-process tests: spawn N gloo processes inside pytest and collect their results."""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args: tuple, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save({"ok": result}, f"{out}.{rank}")
    except BaseException:
        torch.save({"error": traceback.format_exc()}, f"{out}.{rank}")
        raise
    finally:
        tdist.destroy_process_group()


def spawn(fn, world: int, tmp_path: Path, *args: Any) -> list[Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` gloo processes; return every rank's result, in rank order.

    ``fn`` must be importable (module level) and its result picklable by ``torch.save``.
    """
    out = str(tmp_path / f"result_{fn.__name__}")
    try:
        mp.spawn(_entry, args=(world, _free_port(), fn, args, out), nprocs=world, join=True)
    except Exception:
        for r in range(world):
            if os.path.exists(f"{out}.{r}"):
                res = torch.load(f"{out}.{r}", weights_only=False)
                if "error" in res:
                    raise AssertionError(f"rank {r} failed:\n{res['error']}") from None
        raise
    return [torch.load(f"{out}.{r}", weights_only=False)["ok"] for r in range(world)]
