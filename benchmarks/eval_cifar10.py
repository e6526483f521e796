"""CIFAR-10 evaluation of a run next to its random-init floor: kNN, linear probe, low-shot 1%/10%.

    PYTHONPATH=. .venv/bin/python benchmarks/eval_cifar10.py RUN_DIR [--data /work/shared/data/cifar10]

For the run's backbone and for a randomly initialised backbone of the same architecture (seed 0; timm's
RegNet zero-initialises each block's last BatchNorm, so that floor comes mostly from the stem and
shortcuts), it extracts (or reuses cached) features of the 50,000 train and 10,000 test images, then runs the
same evaluations as the CLI: weighted kNN (k = 10, 20, 200), the linear-probe grid (val split carved from
train), and low-shot 1% / 10% (3 seeds; linear and kNN). JSONs go to RUN_DIR/eval/ (the random-init ones as
``random_*.json``); a markdown table and the timings of the evaluations of cached features are printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch


def _evaluate(name: str, train, test, out_dir: Path, seeds: int) -> dict:
    from openseer.eval.knn import knn_classify
    from openseer.eval.linear import linear_probe
    from openseer.eval.lowshot import run_lowshot

    timings = {}
    started = time.perf_counter()
    knn = knn_classify(train.features, train.labels, test.features, test.labels, ks=(10, 20, 200))
    timings["knn"] = time.perf_counter() - started
    started = time.perf_counter()
    linear = linear_probe(train.features, train.labels, test.features, test.labels, len(train.classes))
    timings["linear_grid"] = time.perf_counter() - started
    started = time.perf_counter()
    lowshot = run_lowshot(
        train, test, (0.01, 0.1), seeds, subsets_out=out_dir / f"{name}_lowshot.subsets.json"
    )
    timings["lowshot"] = time.perf_counter() - started
    results = {
        "knn": {"eval": "knn", "top1": {str(k): v for k, v in knn.items()}, "k": [10, 20, 200]},
        "linear": linear,
        "lowshot": lowshot,
    }
    for kind, result in results.items():
        (out_dir / f"{name}_{kind}.json").write_text(json.dumps(result, indent=2))
    return {"results": results, "timings": timings}


def _row(label: str, r: dict) -> str:
    knn, lin, low = r["results"]["knn"]["top1"], r["results"]["linear"], r["results"]["lowshot"]["results"]

    def ms(v):
        return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"

    cells = [
        label,
        f"{100 * knn['20']:.1f}",
        f"{100 * knn['200']:.1f}",
        f"{100 * lin['top1']:.1f}",
        ms(low["0.01"]["linear_top1"]),
        ms(low["0.01"]["knn_top1"]["20"]),
        ms(low["0.1"]["linear_top1"]),
        ms(low["0.1"]["knn_top1"]["20"]),
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument(
        "--data", default="/work/shared/data/cifar10", help="folder holding cifar10-{train,test}.tar"
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--skip-random", action="store_true", help="only the run's backbone")
    args = p.parse_args()
    from openseer.checkpoint import export_backbone, load_backbone
    from openseer.eval.cache import cached_features, check_pair
    from openseer.models.backbone import create_backbone_from_spec
    from openseer.run_state import load_run_config

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    run_dir = Path(args.run_dir)
    out_dir = run_dir / "eval"
    out_dir.mkdir(exist_ok=True)
    train_path, test_path = f"{args.data}/cifar10-train.tar", f"{args.data}/cifar10-test.tar"
    backbone, config = load_backbone(run_dir)
    candidates = [("pretrained", run_dir, backbone)]
    if not args.skip_random:
        spec = json.loads((run_dir / "backbone.json").read_text())
        torch.manual_seed(0)
        random_dir = run_dir / "eval" / "random_init"
        if not (random_dir / "backbone.safetensors").is_file():
            export_backbone(random_dir, create_backbone_from_spec(spec), spec)
        # the run's config beside it: every command then evaluates both with the same transform
        shutil.copyfile(run_dir / "config.yaml", random_dir / "config.yaml")
        random_backbone, _ = load_backbone(random_dir)
        candidates.append(("random", random_dir, random_backbone))
    cfg = load_run_config(run_dir)
    summary = {"run": str(run_dir), "steps": json.loads((run_dir / "summary.json").read_text()).get("steps")}
    rows = []
    for name, ckpt, model in candidates:
        feats = []
        for data in (train_path, test_path):
            f, meta = cached_features(
                ckpt, data, cache_dir=run_dir / "features", backbone=model, config=config
            )
            print(
                f"{name}: {data}: {len(f)} x {f.dim} features, {'cached' if meta['cached'] else 'extracted'} "
                f"in {meta['seconds']:.1f} s",
                file=sys.stderr,
            )
            feats.append(f)
        check_pair(*feats)
        r = _evaluate(name, *feats, out_dir, args.seeds)
        summary[name] = r["timings"]
        rows.append(
            _row("random init" if name == "random" else f"{cfg.model.backbone}, {summary['steps']} steps", r)
        )
    header = (
        "| backbone | kNN k=20 | kNN k=200 | linear | 1% linear | 1% kNN k=20 | 10% linear | 10% kNN k=20 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    print(header)
    print("\n".join(rows))
    print(json.dumps(summary, indent=2))
    (out_dir / "benchmark_timings.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
