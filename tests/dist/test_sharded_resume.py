"""A 2-process FSDP2 run with sharded checkpoints resumes in 2 processes and in 1 with the same losses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from safetensors.torch import load_file

from openseer.config import load_config
from openseer.train import pretrain
from tests.dist.common import spawn
from tests.dist.test_data_parallel import TINY_REGNET
from tests.helpers import TINY_OVERRIDES, write_images

INTERRUPT_AT = 2


def _cfg(data: Path, batch_size: int):
    return load_config(
        "demo",
        [
            *TINY_OVERRIDES,
            *TINY_REGNET,
            f"data.path={data}",
            f"train.batch_size={batch_size}",
            "train.epochs=1",
            "train.precision=fp32",
            "swav.queue_length=8",
            "swav.queue_start_epoch=0",
            "swav.freeze_prototypes_steps=1",
            "parallel.strategy=fsdp",
            "parallel.sync_batchnorm=true",
        ],
    )


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def two_process_runs(rank: int, world: int, root: str) -> None:
    root = Path(root)
    cfg = _cfg(root / "imgs", 4)
    assert pretrain(cfg, root / "full")["status"] == "completed"

    def interrupt(step, loss):
        if step == INTERRUPT_AT:
            raise KeyboardInterrupt

    assert pretrain(cfg, root / "part2", on_step=interrupt)["status"] == "interrupted"
    if rank == 0:
        shutil.copytree(root / "part2", root / "part1")
    tdist.barrier()
    assert pretrain(cfg, root / "part2")["status"] == "completed"


@pytest.mark.dist
def test_sharded_checkpoint_resumes_in_two_and_in_one_process(tmp_path):
    write_images(tmp_path / "imgs", 24)  # 3 steps of a global batch of 8
    spawn(two_process_runs, 2, tmp_path, str(tmp_path))
    ckpts = tmp_path / "part1" / "checkpoints"
    assert (ckpts / "LATEST").read_text().strip() == f"step_{INTERRUPT_AT:08d}"
    assert len(list((ckpts / f"step_{INTERRUPT_AT:08d}").glob("*.distcp"))) == 2  # one shard per process

    # one process, the same global batch (8 = 2 x 4), continues from the 2-process shards
    summary = pretrain(_cfg(tmp_path / "imgs", 8), tmp_path / "part1")
    assert summary["status"] == "completed" and summary["steps"] == 3
    full = _losses(tmp_path / "full")
    assert len(full) == 3
    assert _losses(tmp_path / "part2") == pytest.approx(full, abs=1e-5)
    assert _losses(tmp_path / "part1") == pytest.approx(full, abs=1e-5)
    # the consolidated backbones agree too
    ref = load_file(tmp_path / "full" / "backbone.safetensors")
    for run in ("part2", "part1"):
        got = load_file(tmp_path / run / "backbone.safetensors")
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=f"{run}: {k}")
