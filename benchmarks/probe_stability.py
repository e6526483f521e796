"""How steady is the throughput that ``openseer compare --minutes`` probes? Each method's short preset is run
for ``--steps`` steps ``--repeats`` times, one after the other, and the images/s of several step windows is
printed per run, so that the choice of probe window (openseer.train.budget.PROBE_WARMUP..PROBE_STEPS) and the
run-to-run spread of the machine can be read side by side (BENCHMARKS.md, "The same minutes for every method").

    .venv/bin/python benchmarks/probe_stability.py --data ../shared/data/cifar10/cifar10-train.tar \\
        --methods simclr,byol --steps 80 --repeats 2 data.augment=fast train.batch_size=128
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from openseer.compare import preset_for
from openseer.config import load_config
from openseer.train import pretrain
from openseer.train.budget import PROBE_STEPS, PROBE_WARMUP, timed_steps, window_images_per_s


def window_rates(ends: list[float], batch: int, windows: list[tuple[int, int]]) -> dict[str, float]:
    """images/s of each window (first, last) that the run covers, and of the median step after the warm-up."""
    rates = {f"{a}-{b}": round(window_images_per_s(ends, batch, a, b), 1) for a, b in windows if b <= len(ends)}
    per_step = [t1 - t0 for t0, t1 in zip(ends[PROBE_WARMUP:], ends[PROBE_WARMUP + 1 :], strict=False)]
    if per_step:
        rates["median step"] = round(batch / statistics.median(per_step), 1)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--methods", default="simclr,byol")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    windows = [(5, 25), (PROBE_WARMUP, PROBE_STEPS), (PROBE_WARMUP, args.steps), (10, args.steps)]
    for method in args.methods.split(","):
        overrides = [f"data.path={json.dumps(args.data)}", f"train.max_steps={args.steps}", *args.overrides]
        cfg = load_config(preset_for(method), overrides)
        for repeat in range(args.repeats):
            summary, ends = timed_steps(cfg, Path(tempfile.mkdtemp(prefix=f"probe-{method}-")), pretrain)
            rates = window_rates(ends, summary["global_batch"], windows)
            print(json.dumps({"method": method, "repeat": repeat, "images_per_s": rates}), flush=True)


if __name__ == "__main__":
    main()
