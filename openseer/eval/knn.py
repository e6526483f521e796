"""Weighted k-nearest-neighbour classification of frozen features.

The protocol is the one of Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", Sec. 3.4) as used by DINO (Caron et al. 2021, `eval_knn.py`): features are L2-normalised,
each test image takes its k most cosine-similar training images, and neighbour i votes for its class with
weight ``exp(s_i / T)``; the class with the largest summed weight is the prediction. No training, no
hyper-parameters beyond k and T, so it is a cheap and stable check of representation quality during and
after pretraining.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from openseer.errors import ConfigError, DataError
from openseer.eval.features import Features
from openseer.eval.registry import Evaluation, Row, SuiteRole, ints, pct, register_evaluation

DEFAULT_KS = (10, 20, 200)


def _as_float(features: Tensor, other: Tensor) -> tuple[Tensor, Tensor]:
    """Cast both feature matrices to a common float dtype of at least float32 precision."""
    dtype = torch.promote_types(features.dtype, other.dtype)
    if not dtype.is_floating_point or torch.finfo(dtype).bits < 32:
        dtype = torch.float32
    return features.to(dtype), other.to(dtype)


def _check_inputs(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor):
    """Raise ValueError on shapes that cannot be classified."""
    if train_features.dim() != 2 or test_features.dim() != 2:
        raise ValueError(
            f"features must be (N, D); got train {tuple(train_features.shape)}, test {tuple(test_features.shape)}"
        )
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError(
            f"kNN needs at least one train and one test feature; got {train_features.shape[0]} train, "
            f"{test_features.shape[0]} test"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"feature dims differ: train {train_features.shape[1]}, test {test_features.shape[1]}")
    if train_labels.shape != (train_features.shape[0],) or test_labels.shape != (test_features.shape[0],):
        raise ValueError("labels must be 1-D with one entry per feature row")
    if int(train_labels.min()) < 0 or int(test_labels.min()) < 0:
        raise ValueError("labels must be non-negative class indices")


@torch.no_grad()
def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Top-1 accuracy of the temperature-weighted kNN vote for several k.

    For a test feature q and its k nearest training features x_i (cosine similarity s_i = q.x_i after
    L2 normalisation), the score of class c is ``sum_i 1[y_i = c] exp(s_i / T)`` (Wu et al. 2018, eq. 7;
    DINO `knn_classifier`). Test features are processed in chunks: one (chunk, N) similarity matmul and
    one top-k with the largest k per chunk, sliced for the smaller k. The computation runs on the device
    of ``train_features``, in float64 if the features are float64, else float32.

    Args:
        train_features: (N, D) features of the labelled reference set.
        train_labels: (N,) class indices.
        test_features: (M, D) features to classify.
        test_labels: (M,) true class indices.
        ks: neighbour counts to evaluate; each is clipped to N.
        temperature: T of the exponential weighting (0.07 in DINO and Wu et al.).
        num_classes: number of classes; inferred from the largest label when None.
        chunk_size: test rows per similarity matmul (memory is chunk_size x N).

    Returns:
        ``{k: top-1 accuracy in [0, 1]}`` for each requested k.
    """
    _check_inputs(train_features, train_labels, test_features, test_labels)
    if not ks or min(ks) < 1:
        raise ConfigError(f"ks must be positive integers, got {list(ks)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    device = train_features.device
    train, test = _as_float(train_features, test_features.to(device))
    train = F.normalize(train, dim=1)
    test = F.normalize(test, dim=1)
    train_labels = train_labels.to(device=device, dtype=torch.int64)
    test_labels = test_labels.to(device=device, dtype=torch.int64)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    elif int(max(train_labels.max(), test_labels.max())) >= num_classes:
        raise ValueError(f"labels must be < num_classes={num_classes}")
    clipped = {k: min(int(k), train.shape[0]) for k in ks}
    max_k = max(clipped.values())
    correct = {k: torch.zeros((), dtype=torch.int64, device=device) for k in ks}  # no per-chunk sync
    train_t = train.t().contiguous()
    for start in range(0, test.shape[0], chunk_size):
        similarity = test[start : start + chunk_size] @ train_t  # (chunk, N) cosine similarities
        top_sim, top_idx = similarity.topk(max_k, dim=1, largest=True, sorted=True)
        del similarity
        neighbour_labels = train_labels[top_idx]  # (chunk, max_k)
        weights = (top_sim / temperature).exp()
        truth = test_labels[start : start + chunk_size]
        for k, k_eff in clipped.items():
            votes = torch.zeros(truth.shape[0], num_classes, dtype=weights.dtype, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :k_eff], weights[:, :k_eff])
            correct[k] += (votes.argmax(dim=1) == truth).sum()
    return {k: int(correct[k]) / test.shape[0] for k in ks}


def _preview(names: Sequence[str], limit: int = 5) -> str:
    """Comma-separated names, shortened to ``limit`` with a count of the rest."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def check_label_sets(train_classes: Sequence[str], test_classes: Sequence[str]) -> None:
    """Check that a train/test pair can be scored by kNN or a linear probe.

    Raises:
        openseer.data.DataError: when train has fewer than 2 classes, or the two class sets differ (the
            message names the classes missing on each side).
    """
    if len(set(train_classes)) < 2:
        raise DataError(
            f"the train split needs at least 2 classes to evaluate, found {len(set(train_classes))}"
            + (f" ({_preview(list(train_classes))})" if train_classes else "")
        )
    train_set, test_set = set(train_classes), set(test_classes)
    if train_set == test_set:
        return
    problems = []
    only_train = sorted(train_set - test_set)
    only_test = sorted(test_set - train_set)
    if only_test:
        problems.append(f"missing from train: {_preview(only_test)}")
    if only_train:
        problems.append(f"missing from test: {_preview(only_train)}")
    raise DataError(f"train and test class lists differ; {'; '.join(problems)}")


def format_table(results: dict[int, float], title: str) -> str:
    """Render ``{k: top-1 fraction}`` as a small aligned text table in percent."""
    header = f"{'k':>6}  {'top-1 (%)':>9}"
    rows = [f"{k:>6}  {100.0 * acc:>9.2f}" for k, acc in sorted(results.items())]
    width = max(len(title), len(header))
    return "\n".join([title, "-" * width, header, *rows])


def align_labels(train: Features, test: Features) -> Features:
    """``test`` with its labels renumbered to ``train``'s class order (both list the same class names,
    perhaps in another order, e.g. two file lists); ``test`` itself when the orders already agree."""
    if list(train.classes or []) == list(test.classes or []):
        return test
    train_index = {name: i for i, name in enumerate(train.classes)}
    permutation = torch.tensor([train_index[name] for name in test.classes], dtype=torch.int64)
    return dataclasses.replace(test, labels=permutation[test.labels], classes=list(train.classes))


def knn_result(train: Features, test: Features, ks: Sequence[int] = DEFAULT_KS, temperature: float = 0.07) -> dict:
    """Score ``test`` by the weighted kNN vote over ``train``: the result every kNN evaluation writes.

    Both carry class names (`openseer.eval.features.source_features`, the feature cache); test labels are
    mapped to train's by name, so two listings of the same classes in another order still score correctly.

    Returns:
        A JSON-able dict: ``eval`` ("knn"), ``top1`` (``{str(k): fraction}``), ``k``, ``temperature``,
        ``num_train``, ``num_test`` (images scored), ``num_failed`` (undecodable images of both splits; also
        split into ``num_failed_train``/``num_failed_test``), ``num_classes``, ``feature_dim``, ``seconds``.

    Raises:
        DataError: fewer than 2 train classes, or the class sets differ.
    """
    started = time.perf_counter()
    check_label_sets(train.classes or [], test.classes or [])
    test = align_labels(train, test)
    top1 = knn_classify(
        train.features,
        train.labels,
        test.features,
        test.labels,
        ks=ks,
        temperature=temperature,
        num_classes=len(train.classes),
    )
    return {
        "eval": "knn",
        "top1": {str(k): acc for k, acc in top1.items()},
        "k": [int(k) for k in ks],
        "temperature": float(temperature),
        "num_train": len(train),
        "num_test": len(test),
        "num_failed": train.num_failed + test.num_failed,
        "num_failed_train": train.num_failed,
        "num_failed_test": test.num_failed,
        "num_classes": len(train.classes),
        "feature_dim": train.dim,
        "seconds": round(time.perf_counter() - started, 3),
    }


def add_k_argument(parser: argparse.ArgumentParser, default: str = "10,20,200") -> None:
    """``--k``: the neighbour counts (``openseer eval knn``, ``eval all``, ``eval lowshot``)."""
    parser.add_argument("--k", default=default, help=f"comma-separated kNN k values [{default}]")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_k_argument(parser)
    parser.add_argument("--temperature", type=float, default=0.07, help="vote temperature T [0.07]")


def _run(train: Features, test: Features, ks: Sequence[int] = DEFAULT_KS, temperature: float = 0.07) -> dict:
    return knn_result(train, test, ks, temperature)


def _describe(result: dict[str, Any]) -> str:
    top1 = {int(k): v for k, v in result["top1"].items()}
    return format_table(top1, f"kNN top-1 ({result.get('checkpoint')})")


def _report_rows(result: dict[str, Any]) -> list[Row]:
    top1 = result.get("top1")
    return [("kNN", f"k={k}", f"{100 * v:.2f}") for k, v in top1.items()] if isinstance(top1, dict) else []


def _suite_options(params: dict[str, Any], out_dir: Path, candidate: str) -> dict[str, Any]:
    return {"ks": params["ks"]}


def _suite_header(params: dict[str, Any]) -> list[str]:
    return [f"kNN k={k}" for k in params["ks"]]


def _suite_cells(result: dict[str, Any], params: dict[str, Any]) -> list[str]:
    return [pct(result["top1"][str(k)]) for k in params["ks"]]


def _suite_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"ks": ints(args.k, "--k")}


def _from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {**_suite_from_args(args), "temperature": args.temperature}


# (options, header, cells, the parameters it declares, their flags, flags -> parameters)
SUITE = SuiteRole(_suite_options, _suite_header, _suite_cells, {"ks": DEFAULT_KS}, add_k_argument, _suite_from_args)
HELP = "weighted kNN on frozen features (DINO protocol: cosine, T=0.07)"
# (name, help, run, describe, report rows, flags, flags -> options, frozen, suite role)
ENTRY = register_evaluation(
    Evaluation("knn", HELP, _run, _describe, _report_rows, _add_arguments, _from_args, True, SUITE)
)
