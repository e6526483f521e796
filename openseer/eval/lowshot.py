"""Low-shot evaluation: linear probe and kNN on class-balanced fractions of the labels, over seeds.

SEER's headline numbers are low-shot (Goyal et al. 2021, Sec. 4.2: 1% and 10% of ImageNet labels); VISSL
and SimCLR v2 draw the subsets per class so that every class keeps the same share of its images. Here a
subset of fraction f keeps ``max(1, round(f * n_c))`` images of each class c, drawn with a seeded generator
from the train split only (never from test). The chosen indices and image names are written to JSON so the
same subsets can be re-used or published; each subset is scored with the grid-searched linear probe
(`openseer.eval.linear`, validation carved from the subset itself) and the weighted kNN, and the mean and
standard deviation over seeds are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from openseer.errors import ConfigError
from openseer.eval.features import Features
from openseer.eval.knn import add_k_argument, knn_classify
from openseer.eval.linear import DEFAULT_LRS, DEFAULT_WDS, add_grid_arguments, grid_from_args, linear_probe
from openseer.eval.registry import Evaluation, Row, SuiteRole, floats, ints, mean_std, register_evaluation
from openseer.io import atomic_write_json


def class_balanced_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of ``max(1, round(fraction * n_c))`` images of every class c, drawn with ``seed``.

    The draw of class c depends only on (seed, c) and the class's members, so adding a class elsewhere
    does not change the others' subsets, and a larger fraction under the same seed is a superset.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must lie in (0, 1], got {fraction}")
    parts = []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(c))
        perm = members[torch.randperm(len(members), generator=generator)]
        parts.append(perm[: max(1, round(fraction * len(members)))])
    return torch.sort(torch.cat(parts)).values


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def run_lowshot(
    train: Features,
    test: Features,
    fractions: Sequence[float] = (0.01, 0.1),
    seeds: int | Sequence[int] = 3,
    ks: Sequence[int] = (10, 20),
    temperature: float = 0.07,
    lrs: Sequence[float] = DEFAULT_LRS,
    wds: Sequence[float] = DEFAULT_WDS,
    epochs: int = 30,
    subsets_out: str | Path | None = None,
) -> dict:
    """Linear probe and kNN for every (fraction, seed) subset of ``train``, scored on all of ``test``.

    Args:
        train, test: cached features of the same classes (see `openseer.eval.cache.check_pair`).
        fractions: label fractions per class, e.g. (0.01, 0.1).
        seeds: a number of seeds (0..n-1) or explicit seeds.
        ks, temperature: kNN settings (k is clipped to the subset size).
        lrs, wds, epochs: linear-probe grid (`openseer.eval.linear.linear_probe`).
        subsets_out: JSON file receiving the chosen train indices and image names of every subset.

    Returns:
        JSON-able dict: ``results[fraction]`` with ``linear_top1``/``knn_top1`` mean/std over seeds and
        the per-seed runs (subset size, chosen lr/wd, kNN per k).
    """
    started = time.perf_counter()
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("need at least one seed")
    num_classes = len(train.classes) if train.classes else int(train.labels.max()) + 1
    subsets: dict[str, dict[str, dict]] = {}
    results: dict[str, dict] = {}
    for fraction in fractions:
        runs = []
        for seed in seed_list:
            idx = class_balanced_subset(train.labels, float(fraction), seed)
            x, y = train.features[idx], train.labels[idx]
            subsets.setdefault(str(fraction), {})[str(seed)] = {
                "indices": idx.tolist(),
                "names": [train.names[i] for i in idx.tolist()] if train.names else None,
            }
            probe = linear_probe(
                x, y, test.features, test.labels, num_classes, lrs, wds, epochs, batch_size=256, seed=seed
            )
            knn = knn_classify(
                x, y, test.features, test.labels, ks=ks, temperature=temperature, num_classes=num_classes
            )
            runs.append(
                {
                    "seed": seed,
                    "num_images": len(idx),
                    "linear_top1": probe["top1"],
                    "linear_top5": probe["top5"],
                    "linear_best": probe["best"],
                    "linear_selection": probe["selection"],
                    "knn_top1": {str(k): v for k, v in knn.items()},
                }
            )
        results[str(fraction)] = {
            "linear_top1": _mean_std([r["linear_top1"] for r in runs]),
            "knn_top1": {str(k): _mean_std([r["knn_top1"][str(k)] for r in runs]) for k in ks},
            "runs": runs,
        }
    if subsets_out is not None:
        atomic_write_json(subsets_out, {"train_classes": train.classes, "subsets": subsets}, indent=None)
    return {
        "eval": "lowshot",
        "fractions": [float(f) for f in fractions],
        "seeds": seed_list,
        "k": [int(k) for k in ks],
        "results": results,
        "num_test": len(test),
        "num_classes": num_classes,
        "subsets_file": str(subsets_out) if subsets_out is not None else None,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _add_fractions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fractions", default="0.01,0.1", help="low-shot label fractions per class [0.01,0.1]")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeded subsets per fraction [3]")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_fractions(parser)
    add_k_argument(parser, "10,20")
    add_grid_arguments(parser)
    parser.add_argument("--subsets-out", help="JSON of the chosen subsets [beside --out, else not written]")


def _from_args(args: argparse.Namespace) -> dict[str, Any]:
    subsets_out = args.subsets_out or (str(Path(args.out).with_suffix(".subsets.json")) if args.out else None)
    options = {"fractions": floats(args.fractions, "--fractions"), "seeds": args.seeds, "ks": ints(args.k, "--k")}
    return {**options, **grid_from_args(args), "subsets_out": subsets_out}


def _describe(result: dict[str, Any]) -> str:
    lines = []
    for fraction, r in result["results"].items():
        knn = ", ".join(f"k={k} {100 * v['mean']:.2f}±{100 * v['std']:.2f}" for k, v in r["knn_top1"].items())
        lin = r["linear_top1"]
        lines.append(f"{float(fraction):.0%} labels: linear {100 * lin['mean']:.2f}±{100 * lin['std']:.2f}; kNN {knn}")
    return "\n".join(lines)


def _report_rows(result: dict[str, Any]) -> list[Row]:
    rows = []
    for fraction, r in result["results"].items():
        lin = r["linear_top1"]
        rows.append((f"low-shot {float(fraction):.0%} linear", f"{lin['n']} seeds", mean_std(lin, 2)))
        rows += [(f"low-shot {float(fraction):.0%} kNN", f"k={k}", mean_std(v, 2)) for k, v in r["knn_top1"].items()]
    return rows


def _suite_options(params: dict[str, Any], out_dir: Path, candidate: str) -> dict[str, Any]:
    low_ks = sorted({min(k, 20) for k in params["ks"]})
    subsets_out = out_dir / f"{candidate}_lowshot.subsets.json"
    return {"fractions": params["fractions"], "seeds": params["seeds"], "ks": low_ks, "subsets_out": subsets_out}


def _suite_header(params: dict[str, Any]) -> list[str]:
    return [f"{f:.0%} {kind}" for f in params["fractions"] for kind in ("linear", "kNN")]


def _suite_cells(result: dict[str, Any], params: dict[str, Any]) -> list[str]:
    low = result["results"]
    low_k = str(max(int(k) for k in next(iter(low.values()))["knn_top1"]))
    return [
        cell
        for f in params["fractions"]
        for cell in (mean_std(low[str(f)]["linear_top1"]), mean_std(low[str(f)]["knn_top1"][low_k]))
    ]


def _suite_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"fractions": floats(args.fractions, "--fractions"), "seeds": args.seeds}


DEFAULTS = {"fractions": (0.01, 0.1), "seeds": 3}
SUITE = SuiteRole(_suite_options, _suite_header, _suite_cells, DEFAULTS, _add_fractions, _suite_from_args)
HELP = "linear + kNN on class-balanced label fractions over seeds"
ENTRY = register_evaluation(
    Evaluation("lowshot", HELP, run_lowshot, _describe, _report_rows, _add_arguments, _from_args, True, SUITE)
)
