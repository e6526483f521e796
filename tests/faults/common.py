"""Shared pieces of the fault-injection tests: a tiny pretraining run driven through the CLI in a subprocess
(so that it can be killed with SIGKILL), the fault injector's environment, and run-directory readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings
from safetensors.torch import load_file

from tests.helpers import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]

#: ``OPENSEER_FUZZ_SCALE=N`` multiplies every fuzz test's example count and draws fresh random examples
#: (a deep local hunt); the default run is derandomized, so CI reports the same examples every time.
FUZZ_SCALE = max(1, int(os.environ.get("OPENSEER_FUZZ_SCALE", "1")))


def fuzz_settings(examples: int, *, fixture_scoped: bool = False) -> settings:
    """Hypothesis settings for the fuzz tests: ``examples`` cases (times ``OPENSEER_FUZZ_SCALE``), no deadline."""
    checks = [HealthCheck.too_slow] + ([HealthCheck.function_scoped_fixture] if fixture_scoped else [])
    return settings(
        max_examples=examples * FUZZ_SCALE, deadline=None, derandomize=FUZZ_SCALE == 1, suppress_health_check=checks
    )


INJECTOR = Path(__file__).resolve().parent / "injector"

#: A 6-step run on 24 images (3 steps per epoch x 2 epochs) that exercises every piece of resumable state:
#: the SwAV queue (from epoch 0), the prototype freeze schedule, a checkpoint every 2 steps plus each epoch end.
RUN_OVERRIDES = [
    *TINY_OVERRIDES,
    "train.epochs=2",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=3",
    "swav.queue_length=16",
    "swav.queue_start_epoch=0",
    "swav.freeze_prototypes_steps=2",
]
RUN_STEPS = 6


def fault_env(fault: str | None = None, rank: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of a subprocess: the worktree first on the path, the injector armed with ``fault``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSEER_FAULT")}
    env["PYTHONPATH"] = os.pathsep.join([str(INJECTOR), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    if fault:
        env["OPENSEER_FAULT"] = fault
    if rank is not None:
        env["OPENSEER_FAULT_RANK"] = str(rank)
    env.update(extra)
    return env


def pretrain_cli(data: Path, out: Path, *extra: str, fault: str | None = None, timeout: float = 300, **env: str):
    """``python -m openseer.cli pretrain demo ...`` in a subprocess; returns the CompletedProcess."""
    argv = [sys.executable, "-m", "openseer.cli", "pretrain", "demo", *RUN_OVERRIDES, *extra]
    argv += ["--data", str(data), "--out", str(out)]
    return subprocess.run(argv, env=fault_env(fault, **env), cwd=REPO, capture_output=True, text=True, timeout=timeout)


#: The fields of a metrics line that may differ across interruptions: wall-clock timings.
TIMINGS = ("images_per_s", "seconds")


def metrics_rows(run: Path) -> list[tuple]:
    """Every metrics line but its timings, as ``(step, loss, lr, ...)``: what must be equal across
    interruptions (the loss, lr, wd, non-finite count and the method's scalars of every row)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"], r["lr"], *sorted((k, v) for k, v in r.items() if k not in TIMINGS)) for r in rows]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The exported backbone and, from last.pt, the whole model (heads, prototypes, queue) and optimizer."""
    from openseer.checkpoint import load_checkpoint

    state = load_checkpoint(run / "checkpoints" / "last.pt")
    out = {f"backbone/{k}": v for k, v in load_file(run / "backbone.safetensors").items()}
    out.update({f"model/{k}": v for k, v in state["model"].items() if torch.is_tensor(v)})
    for i, s in state["optimizer"]["state"].items():
        out.update({f"optim/{i}/{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return out


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def no_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" not in text
