"""``pretrain --minutes M``: planned vs used wall time, and the same steps with the preset's own schedule cut
short (issue 23 item 5, BENCHMARKS.md "A wall-clock budget").

For each M: one run with ``train.minutes=M`` (a throughput probe turns M into steps N; every schedule spans
those N steps), then the same preset and seed with its own schedule (``train.epochs`` as the preset says),
stopped after the same N steps (the way a job killed at a deadline stops: a checkpoint, ``status:
interrupted``). Writes ``OUT/minutes_budget.json``: per M the plan, the minutes used by pretraining, the whole
call's wall time (probe and start-up included) and the step counts. Accuracy of the two arms' last checkpoints:

    PYTHONPATH=. .venv/bin/python benchmarks/minutes_budget.py --data $D/cifar10-train.tar --out runs/minutes \
        --preset vicreg-cifar10 --minutes 10,30 data.augment=fast
    PYTHONPATH=. .venv/bin/python benchmarks/health_correlation.py --runs 'runs/minutes/*' --no-init \
        --train $D/cifar10-train.tar --test $D/cifar10-test.tar --out runs/minutes/accuracy.json

Runs already finished in ``OUT`` are kept (re-running the script resumes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from openseer.config import load_config
from openseer.train.loop import pretrain


def stop_after(steps: int):
    """An ``on_step`` that stops the run after ``steps`` optimizer steps (checkpoint, then stop)."""

    def on_step(step: int, loss: float) -> None:
        if step >= steps:
            raise KeyboardInterrupt

    return on_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="vicreg-cifar10")
    ap.add_argument("--minutes", default="10,30", help="comma-separated budgets")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="config overrides a.b=value, for both arms")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result_file = out / "minutes_budget.json"
    results = json.loads(result_file.read_text()) if result_file.exists() else {}
    overrides = [*args.overrides, f"data.path={args.data}"]  # parsed and checked as on the command line
    for minutes in [float(m) for m in args.minutes.split(",")]:
        key = f"{minutes:g}"
        if key in results:
            continue
        cfg = load_config(args.preset, [*overrides, f"train.minutes={minutes}"])
        started = time.time()
        budgeted = pretrain(cfg, out / f"minutes-{key}")
        wall = time.time() - started
        steps = int(budgeted["budget"]["steps"])
        own = load_config(args.preset, overrides)
        started = time.time()
        cut = pretrain(own, out / f"cut-{key}", on_step=stop_after(steps))
        cut_wall = time.time() - started
        results[key] = dict(
            budget=budgeted["budget"],
            budgeted_status=budgeted["status"],
            budgeted_steps=budgeted["steps"],
            budgeted_wall_minutes=wall / 60,
            cut_status=cut["status"],
            cut_steps=cut["steps"],
            cut_wall_minutes=cut_wall / 60,
            preset_total_steps=cut["total_steps"],
        )
        print(json.dumps({key: results[key]}), flush=True)
        result_file.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
