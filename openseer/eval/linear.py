"""Linear probes on frozen features: a grid of learning rates x weight decays trained in one pass.

The protocol follows SEER / VISSL (Goyal et al. 2021, Sec. 4.1; Goyal et al. 2019 "Scaling and Benchmarking
Self-Supervised Visual Representation Learning") and dinov2's ``eval/linear.py``: frozen features, a linear
classifier per hyper-parameter setting, the setting chosen on a validation split carved from the train
split, and test top-1/top-5 reported for that setting only (never chosen on test).

All heads of the grid are one (H, D, C) weight tensor trained together on the same mini-batches, as dinov2
trains many linear heads at once: one pass over the (cached) features serves every setting, and H heads
cost one batched matrix product. Features are standardised with the train statistics first (VISSL puts a
BatchNorm without affine parameters in front of the head for the same reason), so one lr grid suits
backbones whose feature scales differ by orders of magnitude. Each head follows SGD with momentum 0.9, a
cosine lr schedule and its own L2 weight decay. The chosen setting is then refit on train + validation
and scored on test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from openseer.errors import ConfigError
from openseer.eval.features import Features
from openseer.eval.registry import Evaluation, Row, SuiteRole, floats, pct, register_evaluation
from openseer.ops.schedules import cosine_schedule

DEFAULT_LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
DEFAULT_WDS = (0.0, 1e-4, 1e-3)


def stratified_split(labels: Tensor, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split indices into (train, val), taking ``round(fraction * n_c)`` of each class for validation
    (at least 1, and never the last image of a class). Seeded, sorted, disjoint."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation fraction must lie in [0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    val_parts = []
    for c in torch.unique(labels):
        members = (labels == c).nonzero().flatten()
        n_val = min(max(1, round(fraction * len(members))), len(members) - 1) if fraction > 0 else 0
        perm = members[torch.randperm(len(members), generator=generator)]
        val_parts.append(perm[:n_val])
    val = torch.sort(torch.cat(val_parts)).values if val_parts else torch.empty(0, dtype=torch.int64)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest logits (k clipped to the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices
    hits = top == labels.unsqueeze(-1)
    return {k: float(hits[..., :k].any(dim=-1).float().mean()) for k in ks}


def standardiser(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std of ``features`` (std floored so constant dimensions stay finite)."""
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False).clamp_min(1e-6)
    return mean, std


def train_linear_heads(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    lrs: Sequence[float],
    wds: Sequence[float],
    epochs: int = 30,
    batch_size: int = 4096,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Train ``len(lrs)`` heads at once; head h uses ``lrs[h]`` and ``wds[h]``.

    Args:
        features: (N, D) standardised features; labels: (N,) class indices.
        num_classes: C.
        lrs, wds: per-head peak lr and L2 weight decay (same length H).
        epochs, batch_size: SGD length and mini-batch size (shuffled each epoch, seeded).

    Returns:
        weights (H, D, C) and biases (H, C).
    """
    if len(lrs) != len(wds) or not lrs:
        raise ValueError("lrs and wds must be non-empty and of the same length")
    n, dim = features.shape
    heads = len(lrs)
    generator = torch.Generator().manual_seed(seed)
    # All heads side by side in one (D, H*C) matrix: a batch costs two GEMMs whatever H is.
    weight = torch.empty(dim, heads * num_classes).normal_(0.0, 0.01, generator=generator)
    bias = torch.zeros(heads * num_classes)
    lr = torch.tensor(lrs, dtype=torch.float32).repeat_interleave(num_classes)
    wd = torch.tensor(wds, dtype=torch.float32).repeat_interleave(num_classes)
    buf_w, buf_b = torch.zeros_like(weight), torch.zeros_like(bias)
    batch_size = min(batch_size, n)
    scales = cosine_schedule(1.0, 0.0, max(1, epochs * -(-n // batch_size))).tolist()  # cosine decay to 0
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        shuffled_x, shuffled_y = features[order], labels[order]  # one gather per epoch, then slices
        for start in range(0, n, batch_size):
            x, y = shuffled_x[start : start + batch_size], shuffled_y[start : start + batch_size]
            logits = torch.addmm(bias, x, weight).view(len(y), heads, num_classes)
            # d(mean cross-entropy)/d(logits) of every head: (softmax - one-hot) / batch
            grad = logits.softmax(dim=-1)
            grad[torch.arange(len(y)), :, y] -= 1.0
            grad = grad.view(len(y), heads * num_classes) / len(y)
            scale = scales[step]
            buf_w.mul_(0.9).add_(torch.addmm(weight * wd, x.t(), grad))
            buf_b.mul_(0.9).add_(grad.sum(dim=0))
            weight -= (lr * scale) * buf_w
            bias -= (lr * scale) * buf_b
            step += 1
    weight = weight.view(dim, heads, num_classes).permute(1, 0, 2).contiguous()
    return weight, bias.view(heads, num_classes)


def head_logits(features: Tensor, weight: Tensor, bias: Tensor, chunk: int = 8192) -> Tensor:
    """(H, N, C) logits of every head, computed in row chunks."""
    heads, dim, classes = weight.shape
    flat = weight.permute(1, 0, 2).reshape(dim, heads * classes)
    parts = [
        torch.addmm(bias.reshape(-1), features[s : s + chunk], flat).view(-1, heads, classes)
        for s in range(0, features.shape[0], chunk)
    ]
    return torch.cat(parts).permute(1, 0, 2)


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int | None = None,
    lrs: Sequence[float] = DEFAULT_LRS,
    wds: Sequence[float] = DEFAULT_WDS,
    epochs: int = 30,
    batch_size: int = 4096,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Grid-searched linear probe: choose (lr, wd) on a validation split of train, refit on all of train,
    report test top-1/top-5.

    When every class has a single image (no validation split possible) the middle of the grid is used and
    ``selection`` says ``"fixed"``.

    Returns:
        JSON-able dict: ``top1``, ``top5`` (test, fractions), ``best`` ({lr, wd}), ``val_top1`` of the chosen
        head, ``grid`` (list of {lr, wd, val_top1}), sizes, ``selection`` and ``seconds``.
    """
    started = time.perf_counter()
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("linear probe needs at least one train and one test feature")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    grid = [(float(lr), float(wd)) for lr in lrs for wd in wds]
    if not grid:
        raise ConfigError("the lr/wd grid is empty")
    x_all = train_features.float()
    y_all = train_labels.long()
    fit_idx, val_idx = stratified_split(y_all, val_fraction, seed)
    rows: list[dict] = []
    if len(val_idx) > 0:
        mean, std = standardiser(x_all[fit_idx])
        weight, bias = train_linear_heads(
            (x_all[fit_idx] - mean) / std,
            y_all[fit_idx],
            num_classes,
            [g[0] for g in grid],
            [g[1] for g in grid],
            epochs,
            batch_size,
            seed,
        )
        val_logits = head_logits((x_all[val_idx] - mean) / std, weight, bias)
        val_acc = [topk_accuracy(val_logits[h], y_all[val_idx], (1,))[1] for h in range(len(grid))]
        rows = [{"lr": lr, "wd": wd, "val_top1": acc} for (lr, wd), acc in zip(grid, val_acc, strict=True)]
        best = max(range(len(grid)), key=lambda h: (val_acc[h], -h))  # ties: the first in grid order
        selection = "validation"
    else:
        best = len(grid) // 2
        selection = "fixed"
    lr, wd = grid[best]
    mean, std = standardiser(x_all)
    weight, bias = train_linear_heads((x_all - mean) / std, y_all, num_classes, [lr], [wd], epochs, batch_size, seed)
    test_logits = head_logits((test_features.float() - mean) / std, weight, bias)[0]
    acc = topk_accuracy(test_logits, test_labels.long(), (1, 5))
    return {
        "eval": "linear",
        "top1": acc[1],
        "top5": acc[5],
        "best": {"lr": lr, "wd": wd},
        "val_top1": rows[best]["val_top1"] if rows else None,
        "selection": selection,
        "grid": rows,
        "epochs": epochs,
        "batch_size": batch_size,
        "num_train": int(len(fit_idx)),
        "num_val": int(len(val_idx)),
        "num_test": int(test_features.shape[0]),
        "num_classes": num_classes,
        "feature_dim": int(train_features.shape[1]),
        "seconds": round(time.perf_counter() - started, 3),
    }


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """``--lrs --wds --epochs``: the linear-probe grid (``openseer eval linear`` and ``eval lowshot``)."""
    parser.add_argument("--lrs", default="0.01,0.03,0.1,0.3,1.0", help="learning rates of the linear-probe grid")
    parser.add_argument("--wds", default="0,1e-4,1e-3", help="weight decays of the linear-probe grid")
    parser.add_argument("--epochs", type=int, default=30, help="passes over the features [30]")


def grid_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of :func:`add_grid_arguments` as `linear_probe` keywords."""
    return {"lrs": floats(args.lrs, "--lrs"), "wds": floats(args.wds, "--wds"), "epochs": args.epochs}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_grid_arguments(parser)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out to choose")
    parser.add_argument("--seed", type=int, default=0)


def _run(train: Features, test: Features, **options: Any) -> dict:
    """`linear_probe` on a feature pair; ``options`` are its keywords."""
    options.setdefault("num_classes", len(train.classes) or None)
    return linear_probe(train.features, train.labels, test.features, test.labels, **options)


def _describe(result: dict[str, Any]) -> str:
    return (
        f"linear probe: test top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}% "
        f"(lr {result['best']['lr']}, wd {result['best']['wd']}, chosen on {result['num_val']} val)"
    )


def _report_rows(result: dict[str, Any]) -> list[Row]:
    best = result.get("best", {})
    top = f"{100 * result['top1']:.2f} (top-5 {100 * result['top5']:.2f})"
    return [("linear", f"lr={best.get('lr')}, wd={best.get('wd')}", top)]


def _suite_options(params: dict[str, Any], out_dir: Path, candidate: str) -> dict[str, Any]:
    return {}


def _from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {**grid_from_args(args), "val_fraction": args.val_fraction, "seed": args.seed}


SUITE = SuiteRole(_suite_options, lambda params: ["linear"], lambda result, params: [pct(result["top1"])])
HELP = "grid of linear probes on frozen features (val split from train)"
ENTRY = register_evaluation(
    Evaluation("linear", HELP, _run, _describe, _report_rows, _add_arguments, _from_args, True, SUITE)
)
