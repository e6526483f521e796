"""Low-shot subsets: class-balanced, seeded, written out, drawn from train only; mean/std over seeds."""

import json

import pytest
import torch

from openseer.eval import Features
from openseer.eval.lowshot import class_balanced_subset, run_lowshot


def test_subsets_are_class_balanced_and_seeded():
    labels = torch.tensor([0] * 200 + [1] * 100 + [2] * 30)
    sub = class_balanced_subset(labels, 0.1, seed=0)
    assert torch.bincount(labels[sub]).tolist() == [20, 10, 3]
    assert torch.equal(sub, class_balanced_subset(labels, 0.1, seed=0))
    assert not torch.equal(sub, class_balanced_subset(labels, 0.1, seed=1))
    assert len(set(sub.tolist())) == len(sub)
    # 1% keeps at least one image of every class, and is a subset of the 10% draw of the same seed
    small = class_balanced_subset(labels, 0.01, seed=0)
    assert torch.bincount(labels[small]).tolist() == [2, 1, 1]
    assert set(small.tolist()) <= set(sub.tolist())
    with pytest.raises(ValueError):
        class_balanced_subset(labels, 0.0, seed=0)


def _features(n, prefix, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.eye(3, 5) * 4
    feats = centres[labels] + 0.5 * torch.randn(n, 5, generator=g)
    names = [f"{prefix}/c{int(c)}/{i:04d}.png" for i, c in enumerate(labels)]
    return Features(feats, labels, names, 0, classes=["c0", "c1", "c2"])


def test_run_lowshot_writes_subsets_and_reports_mean_std(tmp_path):
    train, test = _features(300, "train", 0), _features(60, "test", 1)
    out = tmp_path / "subsets.json"
    result = run_lowshot(train, test, fractions=(0.02, 0.1), seeds=2, ks=(1, 5), epochs=5, subsets_out=out)
    assert result["eval"] == "lowshot" and result["seeds"] == [0, 1]
    for fraction in ("0.02", "0.1"):
        r = result["results"][fraction]
        assert r["linear_top1"]["n"] == 2 and r["linear_top1"]["mean"] > 0.9
        assert set(r["knn_top1"]) == {"1", "5"} and r["knn_top1"]["1"]["std"] >= 0
    written = json.loads(out.read_text())["subsets"]
    assert set(written) == {"0.02", "0.1"} and set(written["0.1"]) == {"0", "1"}
    test_names = set(test.names)
    for per_seed in written.values():
        for entry in per_seed.values():
            assert all(n.startswith("train/") and n not in test_names for n in entry["names"])
            assert [train.names[i] for i in entry["indices"]] == entry["names"]
    assert len(written["0.1"]["0"]["indices"]) == 30  # 10 of each of 3 classes
