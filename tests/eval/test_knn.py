"""Tests of the weighted kNN classifier against a per-sample float64 reference."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from openseer.data import DataError, eval_transform, open_source
from openseer.eval import check_label_sets, format_table, knn_classify, knn_result, source_features
from openseer.eval import features as features_module
from openseer.eval import knn as knn_module


def reference_knn(train, train_labels, test, test_labels, ks, temperature, num_classes):
    """Wu et al. 2018 / DINO weighted vote, one test sample at a time, in float64 numpy."""
    train = np.asarray(train, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    correct = {k: 0 for k in ks}
    for query, truth in zip(test, np.asarray(test_labels), strict=True):
        similarity = train @ query
        order = np.argsort(-similarity, kind="stable")
        for k in ks:
            votes = np.zeros(num_classes)
            for i in order[: min(k, len(train))]:
                votes[train_labels[i]] += math.exp(similarity[i] / temperature)
            correct[k] += int(np.argmax(votes) == truth)
    return {k: correct[k] / len(test) for k in ks}


def random_problem(num_train=300, num_test=50, dim=16, num_classes=5, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    train = torch.randn(num_train, dim, generator=generator, dtype=dtype)
    test = torch.randn(num_test, dim, generator=generator, dtype=dtype)
    train_labels = torch.randint(num_classes, (num_train,), generator=generator)
    test_labels = torch.randint(num_classes, (num_test,), generator=generator)
    return train, train_labels, test, test_labels


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_matches_per_sample_reference(temperature):
    # A weak class signal so the accuracies are neither 0 nor 1 and the vote actually matters.
    train, train_labels, test, test_labels = random_problem()
    train[torch.arange(300), train_labels] += 1.0
    test[torch.arange(50), test_labels] += 1.0
    ks = (1, 3, 10, 20, 200)
    expected = reference_knn(train, train_labels, test, test_labels, ks, temperature, 5)
    assert knn_classify(train, train_labels, test, test_labels, ks=ks, temperature=temperature) == expected
    # float32 features give the same votes on continuous data (no near-ties).
    got32 = knn_classify(train.float(), train_labels, test.float(), test_labels, ks=ks, temperature=temperature)
    assert got32 == expected


def test_separable_classes_are_perfect():
    generator = torch.Generator().manual_seed(1)
    means = 10.0 * torch.randn(4, 32, generator=generator)
    train_labels = torch.arange(400) % 4
    test_labels = torch.arange(80) % 4
    train = means[train_labels] + torch.randn(400, 32, generator=generator)
    test = means[test_labels] + torch.randn(80, 32, generator=generator)
    results = knn_classify(train, train_labels, test, test_labels, ks=(10, 20, 200))
    assert results == {10: 1.0, 20: 1.0, 200: 1.0}


def test_random_labels_are_at_chance():
    train, train_labels, test, test_labels = random_problem(
        num_train=2000, num_test=2000, dim=8, num_classes=4, seed=2, dtype=torch.float32
    )
    for accuracy in knn_classify(train, train_labels, test, test_labels, ks=(10, 50)).values():
        assert abs(accuracy - 0.25) < 0.05


def test_k_larger_than_train_set():
    train, train_labels, test, test_labels = random_problem(num_train=7, num_test=20, seed=3)
    results = knn_classify(train, train_labels, test, test_labels, ks=(5, 7, 50, 1000), num_classes=5)
    expected = reference_knn(train, train_labels, test, test_labels, (5, 7, 50, 1000), 0.07, 5)
    assert results == expected
    assert results[50] == results[7] == results[1000]


def test_chunking_does_not_change_the_result():
    train, train_labels, test, test_labels = random_problem(num_test=97, seed=4, dtype=torch.float32)
    whole = knn_classify(train, train_labels, test, test_labels, chunk_size=4096)
    for chunk_size in (1, 10, 96):
        assert knn_classify(train, train_labels, test, test_labels, chunk_size=chunk_size) == whole


def test_accepts_unnormalised_half_inputs():
    train, train_labels, test, test_labels = random_problem(seed=5, dtype=torch.float32)
    expected = knn_classify(train, train_labels, test, test_labels)
    scaled = knn_classify((3 * train).bfloat16(), train_labels, test.bfloat16(), test_labels)
    assert set(scaled) == set(expected)
    assert all(0.0 <= acc <= 1.0 for acc in scaled.values())


def test_bad_inputs_raise():
    train, train_labels, test, test_labels = random_problem()
    with pytest.raises(ValueError, match="feature dims differ"):
        knn_classify(train, train_labels, test[:, :3], test_labels)
    with pytest.raises(ValueError, match="at least one"):
        knn_classify(train[:0], train_labels[:0], test, test_labels)
    with pytest.raises(ValueError, match="num_classes"):
        knn_classify(train, train_labels, test, test_labels, num_classes=2)
    with pytest.raises(ValueError, match="ks"):
        knn_classify(train, train_labels, test, test_labels, ks=(0,))


def test_check_label_sets():
    check_label_sets(["cat", "dog"], ["dog", "cat"])
    with pytest.raises(DataError, match="at least 2 classes.*'cat'"):
        check_label_sets(["cat"], ["cat"])
    with pytest.raises(DataError, match="missing from train: 'owl'; missing from test: 'dog'") as info:
        check_label_sets(["cat", "dog"], ["cat", "owl"])
    assert "\n" not in str(info.value)


def test_format_table():
    table = format_table({200: 0.5, 10: 0.71234}, title="kNN on val")
    lines = table.splitlines()
    assert lines[0] == "kNN on val"
    assert lines[3].split() == ["10", "71.23"] and lines[4].split() == ["200", "50.00"]
    assert len({len(line) for line in lines[2:]}) == 1  # aligned columns


ALPHABET = ["a", "b", "c"]


class _Source:
    """Stand-in ImageSource: ``items`` holds each image's class name, or None for an undecodable file."""

    def __init__(self, classes, items):
        self.classes = classes
        self.items = items

    def __len__(self):
        return len(self.items)

    def name(self, i):
        return f"img{i}.jpg"


class _LabelledDataset(torch.utils.data.Dataset):
    """Stand-in for openseer.data.LabelledDataset; an image of class "b" is filled with 1.0 (its letter)."""

    def __init__(self, source, transform):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        name = self.source.items[i]
        if name is None:
            return torch.zeros(3, 4, 4), 0, False
        return torch.full((3, 4, 4), float(ALPHABET.index(name))), self.source.classes.index(name), True


class _DataError(ValueError):
    pass


class _LetterBackbone(nn.Module):
    """Returns a noisy one-hot code of the letter painted in the image."""

    def forward(self, x):
        code = nn.functional.one_hot(x[:, 0, 0, 0].long(), len(ALPHABET)).float()
        return code + 0.1 * torch.rand(x.shape[0], len(ALPHABET))


def run_knn(backbone, train_source, test_source, transform, ks, batch_size=256):
    """Extraction then scoring, the steps of the one kNN pipeline (`openseer.eval.pipeline`)."""
    train = source_features(backbone, train_source, transform, batch_size=batch_size)
    test = source_features(backbone, test_source, transform, batch_size=batch_size)
    return knn_result(train, test, ks)


def test_run_knn_end_to_end(monkeypatch):
    monkeypatch.setattr(features_module, "LabelledDataset", _LabelledDataset)
    monkeypatch.setattr(knn_module, "DataError", _DataError)
    train = _Source(["a", "b", "c"], ["a", "b", "c"] * 10 + [None])
    # The same classes listed in another order: labels are remapped by name, so kNN is still perfect.
    test = _Source(["c", "a", "b"], ["a", "b", "c", "c", None, None])
    result = run_knn(_LetterBackbone(), train, test, transform=None, ks=(1, 5), batch_size=4)
    assert result["top1"] == {"1": 1.0, "5": 1.0}
    assert result["num_train"] == 30 and result["num_test"] == 4
    assert result["num_failed"] == 3 and result["feature_dim"] == 3 and result["k"] == [1, 5]
    assert result["temperature"] == 0.07 and result["seconds"] >= 0
    with pytest.raises(_DataError, match="missing from test: 'c'"):
        run_knn(_LetterBackbone(), train, _Source(["a", "b"], ["a", "b"]), transform=None, ks=(1,))


def _write_split(root, corrupt=False):
    colours = {"blue": (0, 0, 255), "red": (255, 0, 0)}
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(3):
            shade = tuple(max(0, c - 40 * i) for c in rgb)
            Image.new("RGB", (12, 10), shade).save(root / name / f"{i}.png")
    if corrupt:
        (root / "red" / "broken.png").write_bytes(b"not a png")


def test_run_knn_on_image_folders(tmp_path):
    _write_split(tmp_path / "train")
    _write_split(tmp_path / "val", corrupt=True)
    transform = eval_transform(8, 1.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    mean_colour = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    result = run_knn(
        mean_colour,
        open_source(tmp_path / "train", labelled=True),
        open_source(tmp_path / "val", labelled=True),
        transform,
        ks=(1, 3, 20),
        batch_size=4,
    )
    assert result["top1"] == {"1": 1.0, "3": 1.0, "20": 1.0}
    assert (result["num_train"], result["num_test"], result["num_failed"]) == (6, 6, 1)
    assert result["feature_dim"] == 3
