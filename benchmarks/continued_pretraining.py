"""Continued pretraining vs from scratch at the same CPU budget, each scored by `openseer eval all`.

    PYTHONPATH=. .venv/bin/python benchmarks/continued_pretraining.py \
        --data ../shared/data/cifar10/cifar10-train.tar \
        --train ../shared/data/cifar10/cifar10-train.tar --test ../shared/data/cifar10/cifar10-test.tar \
        --init timm:regnety_004.pycls_in1k --preset cifar10 --epochs 2 --out runs/continued data.augment=fast

``--init`` is any SOURCE with the preset's backbone (a cached timm tag, a VISSL/SwAV/DINO file, an openseer run
dir). Without network, make one with ``--source-data OTHER_IMAGES``: the script first pretrains the same preset on
those images for ``--source-epochs`` and continues from that run. Both arms use the same preset, seed, data and
number of steps (``key=value`` overrides apply to every run); only the starting weights differ. Prints the two
`eval all` tables (kNN, linear, low-shot vs the random-init floor) and writes them into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openseer  # noqa: E402
from openseer.config import load_config  # noqa: E402
from openseer.eval.suite import run_suite  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="pretraining images of the target domain")
    parser.add_argument("--train", required=True, help="labelled train images for eval all")
    parser.add_argument("--test", required=True, help="labelled test images for eval all")
    parser.add_argument("--init", help="SOURCE to continue from (same backbone as the preset)")
    parser.add_argument("--source-data", help="without --init: pretrain the source run on these images first")
    parser.add_argument("--source-epochs", type=int, default=2)
    parser.add_argument("--preset", default="cifar10")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--out", default="runs/continued")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args()
    preset = load_config(args.preset, args.overrides)  # checked as on the command line
    out = Path(args.out)
    init = args.init
    if init is None:
        if not args.source_data:
            parser.error("give --init SOURCE or --source-data IMAGES")
        started = time.time()
        source_budget = {"train__epochs": args.source_epochs}
        openseer.pretrain(preset, data=args.source_data, out=out / "source", **source_budget)
        print(f"source run: {time.time() - started:.0f} s on {args.source_data}")
        init = str(out / "source")
    budget = {"train__epochs": args.epochs, **({"train__max_steps": args.max_steps} if args.max_steps else {})}
    results = {}
    for arm, arm_init in (("scratch", None), ("continued", init)):
        started = time.time()
        summary = openseer.pretrain(preset, data=args.data, out=out / arm, init=arm_init, **budget)
        seconds = time.time() - started
        suite = run_suite(out / arm, args.train, args.test, seeds=args.seeds, baseline=arm == "scratch")
        results[arm] = {
            "pretrain_seconds": seconds,
            "final_loss": summary.get("final_loss_mean"),
            "table": suite["table"],
        }
        print(
            f"\n## {arm} (init {arm_init or 'random'}): {summary['steps']} steps in {seconds:.0f} s, "
            f"final loss {summary.get('final_loss_mean')}\n\n{suite['table']}",
            flush=True,
        )
    (out / "continued_vs_scratch.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
