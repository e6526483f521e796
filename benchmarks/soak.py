"""Soak test: a CPU pretraining killed with SIGKILL at random moments and restarted until it completes; its
final weights and per-step losses must equal those of the same run left alone, and no image may be lost.

    PYTHONPATH=. .venv/bin/python benchmarks/soak.py --minutes 2 --kill-every 15 --out /tmp/soak   # a check
    PYTHONPATH=. .venv/bin/python benchmarks/soak.py --minutes 30 --kill-every 120 --out soak_run   # BENCHMARKS.md
    ... --threads 1 --parallel    # the reference and the faulted run side by side, one core each

``--minutes`` is the length of the uninterrupted run (the number of steps is calibrated on a short run first);
the faulted run then takes that long plus what each restart costs. Each attempt is killed after a random
delay, uniform in [0.5, 1.5] x ``--kill-every`` seconds, wherever it is (start-up, a forward pass, a checkpoint
write), and the same command is run again. Prints a Markdown table and writes ``OUT/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "aug.global_size=32",
    "aug.local_crops=2",
    "aug.local_size=16",
    "model.backbone=regnetx_002",
    "model.channels_last=false",
    "swav.hidden_dims=[64]",
    "swav.output_dim=32",
    "swav.num_prototypes=30",
    "swav.queue_length=64",
    "swav.queue_start_epoch=1",
    "train.batch_size=16",
    "train.log_every=1",
    "data.num_workers=0",
]


def write_data(folder: Path, n: int, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = np.zeros((size, size, 3)) + rng.integers(0, 256, 3)
        img = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    return folder


def command(data: Path, out: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "openseer.cli",
        "pretrain",
        "demo",
        *OVERRIDES,
        *extra,
        "--data",
        str(data),
        "--out",
        str(out),
    ]


THREADS: dict[str, str] = {}  # OMP_NUM_THREADS for every run, set by --threads


def env() -> dict[str, str]:
    return {**os.environ, **THREADS, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def rows(run: Path) -> list[tuple[int, float, float]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        out.append((r["step"], r["loss"], r["lr"], r["seconds"]))
    return out


def checkpoint_step(run: Path) -> int:
    from openseer.checkpoint import CheckpointError
    from openseer.run_state import find_resume_state

    try:
        state, _ = find_resume_state(run / "checkpoints")
    except CheckpointError:
        return -1
    return state["step"] if state else 0


def weights(run: Path) -> dict[str, torch.Tensor]:
    from openseer.checkpoint import load_checkpoint

    out = {f"backbone/{k}": v for k, v in load_file(run / "backbone.safetensors").items()}
    model = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    out.update({f"model/{k}": v for k, v in model.items() if torch.is_tensor(v)})
    return out


def run_once(cmd: list[str]) -> tuple[int, float, str]:
    started = time.time()
    proc = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True)
    return proc.returncode, time.time() - started, proc.stderr


def calibrate(data: Path, out: Path, images: int, batch: int, minutes: float) -> tuple[int, float]:
    """(epochs, seconds of start-up) so that the uninterrupted run takes about ``minutes``."""
    code, wall, err = run_once(command(data, out, ["train.max_steps=8", "train.checkpoint_every=1000"]))
    if code != 0:
        sys.exit(f"calibration run failed:\n{err[-3000:]}")
    r = rows(out)
    per_step = (r[-1][3] - r[1][3]) / max(len(r) - 2, 1)
    startup = wall - r[-1][3]
    steps = max(10, int((minutes * 60 - startup) / per_step))
    steps_per_epoch = images // batch
    return math.ceil(steps / steps_per_epoch), startup


class Reference(threading.Thread):
    """The uninterrupted run, waited for in a thread so that its wall time is right with ``--parallel``."""

    def __init__(self, cmd: list[str]):
        super().__init__(daemon=True)
        self.proc = subprocess.Popen(
            cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.started, self.seconds, self.err = time.time(), 0.0, ""
        self.start()

    def run(self) -> None:
        _, self.err = self.proc.communicate()
        self.seconds = time.time() - self.started

    def result(self) -> float:
        self.join()
        if self.proc.returncode != 0:
            sys.exit(f"reference run failed:\n{(self.err or '')[-3000:]}")
        return self.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=3.0, help="length of the uninterrupted run [3]")
    p.add_argument("--kill-every", type=float, default=30.0, help="mean seconds between kills [30]")
    p.add_argument("--checkpoint-every", type=int, default=10, help="train.checkpoint_every [10]")
    p.add_argument("--images", type=int, default=256, help="synthetic 32 px images [256]")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times [0]")
    p.add_argument("--out", type=Path, required=True, help="work folder (data, runs, soak.json)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (OMP_NUM_THREADS) [torch's default]")
    p.add_argument("--parallel", action="store_true", help="run the reference beside the faulted run, not before")
    args = p.parse_args()
    if args.threads:
        THREADS["OMP_NUM_THREADS"] = str(args.threads)
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    if not data.is_dir():
        write_data(data, args.images)
    images = len(list(data.glob("*.png")))
    epochs, startup = calibrate(data, args.out / "calibration", images, 16, args.minutes)
    if args.kill_every < 2 * startup:
        print(
            f"warning: --kill-every {args.kill_every}s is close to the start-up time ({startup:.0f}s): most kills "
            "will land before the first step",
            file=sys.stderr,
        )
    extra = [f"train.epochs={epochs}", f"train.checkpoint_every={args.checkpoint_every}"]

    print(f"reference: {epochs} epochs of {images // 16} steps, uninterrupted ...", file=sys.stderr)
    reference = Reference(command(data, args.out / "reference", extra))
    if not args.parallel:
        reference_s = reference.result()

    run = args.out / "faulted"
    cmd = command(data, run, extra)
    faults, survived, attempts, lost_steps, failure = 0, 0, [], 0, None
    started = time.time()
    kill_every, stalled = args.kill_every, 0
    while True:
        delay = rng.uniform(0.5, 1.5) * kill_every
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
        code, wall = proc.returncode, time.time() - t0
        if faults and code in (0, -signal.SIGKILL):
            survived += 1  # the previous kill was survived: this attempt started again without an error
        done_steps = max((r[0] for r in rows(run)), default=0)
        attempts.append({"seconds": wall, "exit": code, "steps_logged": done_steps, "checkpoint": checkpoint_step(run)})
        if code == 0:
            break
        if code != -signal.SIGKILL:
            failure = (err or "")[-3000:]
            break
        faults += 1
        progressed = len(attempts) < 2 or attempts[-1]["checkpoint"] > attempts[-2]["checkpoint"]
        stalled = 0 if progressed else stalled + 1
        if stalled >= 3:  # kills come faster than start-up + a checkpoint: the run would never finish
            kill_every *= 2
            stalled = 0
            print(f"no progress in 3 attempts: killing every ~{kill_every:.0f}s from now on", file=sys.stderr)
        lost_steps += max(done_steps - attempts[-1]["checkpoint"], 0)  # recomputed after the restart
        print(
            f"kill {faults}: after {wall:.0f}s, at step {done_steps}, resumes from {attempts[-1]['checkpoint']}",
            file=sys.stderr,
        )
    faulted_s = time.time() - started
    if args.parallel:
        reference_s = reference.result()

    ref_rows = [r[:3] for r in rows(args.out / "reference")]
    got_rows = [r[:3] for r in rows(run)]
    equal_rows = sum(a == b for a, b in zip(ref_rows, got_rows, strict=False)) if failure is None else 0
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    images_lost = (len(ref_rows) - equal_rows) * 16 + summary.get("skipped_images", 0)
    same = False
    if failure is None:
        mine, theirs = weights(run), weights(args.out / "reference")
        same = mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    result = {
        "faults_injected": faults,
        "faults_survived": survived,
        "images_lost": images_lost,
        "steps": len(ref_rows),
        "steps_recomputed": lost_steps,
        "losses_equal": failure is None and got_rows == ref_rows,
        "final_weights_equal": bool(same),
        "reference_seconds": reference_s,
        "faulted_seconds": faulted_s,
        "time_lost_per_restart_s": (faulted_s - reference_s) / faults if faults else 0.0,
        "startup_seconds": startup,
        "kill_every_s": args.kill_every,
        "attempts": attempts,
        "failure": failure,
    }
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))
    print(
        "| faults injected | survived | images lost | steps (recomputed) | losses equal | final weights equal "
        "| uninterrupted | with faults | time lost per restart |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {faults} | {survived} | {images_lost} | {len(ref_rows)} ({lost_steps}) | {result['losses_equal']} | "
        f"{result['final_weights_equal']} | {reference_s:.0f} s | {faulted_s:.0f} s | "
        f"{result['time_lost_per_restart_s']:.1f} s |"
    )
    if failure:
        sys.exit(f"an attempt failed with exit code {attempts[-1]['exit']}:\n{failure}")
    if not (same and result["losses_equal"] and images_lost == 0):
        sys.exit("the faulted run differs from the uninterrupted one")


if __name__ == "__main__":
    main()
