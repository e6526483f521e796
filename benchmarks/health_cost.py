"""Cost of the label-free health signals (issue 23): step time of the steps with a health check vs without,
in one run, and the share of the run's time the checks take.

    PYTHONPATH=. .venv/bin/python benchmarks/health_cost.py --data POOL --out RUN_DIR [overrides ...]

One ``pretrain`` of the ``demo`` preset (overrides apply, e.g. ``train.max_steps=60``) with the health
signals at their default cadence (a quarter epoch on the log cadence) and probe size (``train.health_images=0``:
pool/20 within [256, 2000]; override it to measure another). Steps with and
without a check alternate at that cadence inside the same run, so the machine's drift hits both alike. The
check's own time is measured around it (``summary.json["health"]``); ``share`` = check seconds / run seconds.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from openseer.config import load_config
from openseer.train import pretrain
from openseer.train.health import health_every


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="pretraining pool (folder or tar)")
    ap.add_argument("--out", required=True, help="run directory (must not hold a run)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.preset, [f"data.path={args.data}", *args.overrides])
    ends: list[float] = []
    started = time.perf_counter()
    summary = pretrain(cfg, args.out, resume=False, on_step=lambda step, loss: ends.append(time.perf_counter()))
    times = [b - a for a, b in zip([started, *ends], ends, strict=False)]
    derived = json.loads((open(f"{args.out}/derived.json")).read())
    every = health_every(cfg, derived["steps_per_epoch"])
    rows = [json.loads(line) for line in open(f"{args.out}/metrics.jsonl")]
    checked = {r["step"] for r in rows if "health_rankme" in r}
    with_check = [t for s, t in enumerate(times, start=1) if s in checked and s > 1]
    without = [t for s, t in enumerate(times, start=1) if s not in checked and s > 1]  # step 1: warm-up
    health = summary["health"]
    print(
        json.dumps(
            {
                "steps": len(times),
                "health_every": every,
                "checks": health["checks"],
                "probe_images": health["images"],
                "step_s_without": round(statistics.median(without), 4),
                "step_s_with_check": round(statistics.median(with_check), 4) if with_check else None,
                "check_s": round(health["seconds"] / max(health["checks"], 1), 4),
                "run_s": round(summary["seconds"], 2),
                "share": round(health["seconds"] / summary["seconds"], 4),
            }
        )
    )


if __name__ == "__main__":
    main()
