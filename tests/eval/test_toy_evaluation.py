"""An evaluation defined here, outside the package, is one registration away from every front end: it shows in
`openseer eval` (help, its own subcommand and flags), in `openseer eval all`, in ``openseer.evaluate`` and in
the report's table. The registry (openseer.eval.registry) is all it needs, as methods need only theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import openseer
from openseer.cli import main
from openseer.errors import ConfigError
from openseer.eval.features import Features
from openseer.eval.registry import EVALUATIONS, Evaluation, SuiteRole, register_evaluation
from openseer.report import eval_rows
from tests.helpers import tiny_run_with_labels

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"image_size": 16, "crop_pct": 1.0, "num_workers": 0, "device": "cpu"}
COMMON = ["--image-size", "16", "--crop-pct", "1.0", "--num-workers", "0", "--device", "cpu"]


def centroid_top1(train: Features, test: Features, center: bool = False) -> dict[str, Any]:
    """Nearest class mean by cosine similarity (after subtracting the train mean when ``center``)."""
    x, q = train.features.float(), test.features.float()
    if center:
        mean = x.mean(dim=0)
        x, q = x - mean, q - mean
    x, q = F.normalize(x, dim=1), F.normalize(q, dim=1)
    means = torch.stack([x[train.labels == c].mean(dim=0) for c in range(len(train.classes))])
    predicted = (q @ F.normalize(means, dim=1).t()).argmax(dim=1)
    return {"eval": "centroid", "top1": float((predicted == test.labels).float().mean()), "center": center}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--center", action="store_true", help="subtract the train mean first")


def _add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--centroid-center", action="store_true", help="centroid column: subtract the mean")


ENTRY = Evaluation(
    name="centroid",
    help="nearest class mean on frozen features (a toy from the tests)",
    run=centroid_top1,
    describe=lambda r: f"nearest centroid: top-1 {100 * r['top1']:.2f}%",
    report_rows=lambda r: [("nearest centroid", f"center={r['center']}", f"{100 * r['top1']:.2f}")],
    add_arguments=_add_arguments,
    from_args=lambda args: {"center": args.center},
    suite=SuiteRole(
        options=lambda params, out_dir, candidate: {"center": params["centroid_center"]},
        header=lambda params: ["centroid (centred)" if params["centroid_center"] else "centroid"],
        cells=lambda result, params: [f"{100 * result['top1']:.1f}"],
        defaults={"centroid_center": False},
        add_arguments=_add_suite_arguments,
        from_args=lambda args: {"centroid_center": args.centroid_center},
    ),
)
if os.environ.get("OPENSEER_EVALUATIONS") == __name__:  # imported as a plugin by `openseer` in a fresh process
    register_evaluation(ENTRY)


@pytest.fixture(autouse=True)
def toy_registered():
    """Registered for this file's tests only, so that other tests see the built-in evaluations alone."""
    register_evaluation(ENTRY)
    yield
    EVALUATIONS.pop("centroid", None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run_with_labels(tmp_path_factory.mktemp("toy_eval"), train_images=30)


def reference_top1(train: Features, test: Features, center: bool) -> float:
    """Nearest class mean in float64 numpy, one test image at a time (independent of the toy's torch code)."""
    x, q = train.features.double().numpy(), test.features.double().numpy()
    if center:
        q = q - x.mean(axis=0)
        x = x - x.mean(axis=0)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    labels = train.labels.numpy()
    means = [x[labels == c].mean(axis=0) for c in range(len(train.classes))]
    hits = 0
    for row, truth in zip(q, test.labels.tolist(), strict=True):
        cosines = [float(row @ m) / (np.linalg.norm(row) * np.linalg.norm(m)) for m in means]
        hits += int(np.argmax(cosines)) == truth
    return hits / len(q)


def test_a_toy_evaluation_reaches_the_cli_the_suite_the_api_and_the_report(run, capsys):
    run_dir, train, test = run
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "centroid" in capsys.readouterr().out and "nearest class mean" in ENTRY.help
    with pytest.raises(SystemExit):
        main(["eval", "centroid", "--help"])
    assert "--center" in capsys.readouterr().out

    train_f = openseer.embed(run_dir, train, **SETTINGS)
    test_f = openseer.embed(run_dir, test, **SETTINGS)
    expected = reference_top1(train_f, test_f, center=True)

    # the command: its flag reaches the run function; the result JSON carries the features' provenance
    out = run_dir / "eval" / "centroid.json"
    pair = ["--checkpoint", str(run_dir), "--train", str(train), "--test", str(test)]
    assert main(["eval", "centroid", *pair, *COMMON, "--center", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["eval"] == "centroid" and result["center"] is True
    assert result["top1"] == pytest.approx(expected, abs=1e-9)
    assert result["features_cached"] == [True, True]  # embed above cached them
    assert "nearest centroid: top-1" in capsys.readouterr().out

    # the API: the same call
    api = openseer.evaluate(run_dir, train, test, protocol="centroid", center=True, **SETTINGS)
    assert api["top1"] == pytest.approx(expected, abs=1e-9)
    uncentred = openseer.evaluate(run_dir, train, test, protocol="centroid", **SETTINGS)
    assert uncentred["top1"] == pytest.approx(reference_top1(train_f, test_f, center=False), abs=1e-9)

    # eval all: its column after the built-in ones, its flag, its JSON beside the others
    suite_dir = run_dir / "suite"
    argv = ["eval", "all", *pair, *COMMON, "--no-baseline", "--seeds", "1", "--fractions", "0.5"]
    assert main([*argv, "--centroid-center", "--out-dir", str(suite_dir)]) == 0
    summary = json.loads((suite_dir / "summary.json").read_text())
    assert summary["header"][-1] == "centroid (centred)"
    assert summary["rows"]["pretrained"][-1] == f"{100 * expected:.1f}"
    assert json.loads((suite_dir / "pretrained_centroid.json").read_text())["top1"] == pytest.approx(expected)
    assert "centroid" in summary["timings"]["pretrained"]

    # the report's table
    rows = [row for row in eval_rows(run_dir) if row[1] == "nearest centroid"]
    assert ("eval/centroid.json", "nearest centroid", "center=True", f"{100 * expected:.2f}") in rows
    assert len(rows) == 2  # the command's JSON and the suite's


def test_the_api_names_the_registered_protocols_and_the_suite_its_options(run):
    run_dir, train, test = run
    with pytest.raises(ConfigError, match="knn, linear, lowshot, finetune, centroid or all"):
        openseer.evaluate(run_dir, train, test, protocol="nope")
    with pytest.raises(ConfigError, match="centroid_center"):
        openseer.evaluate(run_dir, train, test, protocol="all", centroid_centre=True)


def test_only_the_registered_name_all_is_refused():
    with pytest.raises(ConfigError, match="'all'"):
        register_evaluation(Evaluation("all", "", centroid_top1, str, lambda r: []))


@pytest.mark.dist
def test_a_plugin_module_named_in_the_environment_is_registered_in_a_fresh_process():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENSEER_EVALUATIONS": __name__}
    cmd = [sys.executable, "-m", "openseer.cli", "eval", "--help"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "centroid" in done.stdout and "nearest class mean" in done.stdout
