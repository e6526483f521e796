"""The feature cache: reused when nothing changed, recomputed when checkpoint, data or transform change."""

import os

import pytest
import torch

from openseer.checkpoint import CheckpointError, export_backbone
from openseer.data import DataError
from openseer.eval.cache import cached_features, check_pair, load_features
from openseer.eval.features import available_layers, feature_extractor
from openseer.eval.settings import EvalSettings
from openseer.models.backbone import create_backbone_from_spec
from tests.helpers import write_images

SPEC = {"timm_name": "regnetx_002"}
CONFIG = {"aug": {"global_size": 16}, "eval": {"crop_pct": 1.0}, "train": {"precision": "fp32"}}


def _run_dir(path, seed=0):
    torch.manual_seed(seed)
    export_backbone(path, create_backbone_from_spec(SPEC), SPEC)
    return path


def test_cache_reuse_and_invalidation(tmp_path):
    run = _run_dir(tmp_path / "run")
    data = write_images(tmp_path / "train", 6, size=16, classes=2)
    options = dict(config=CONFIG, settings=EvalSettings(image_size=16, crop_pct=1.0, num_workers=0))
    backbone = create_backbone_from_spec(SPEC)
    first, meta = cached_features(run, data, backbone=backbone, **options)
    assert not meta["cached"] and first.features.shape == (6, 368) and first.classes == ["class0", "class1"]
    again, meta2 = cached_features(run, data, backbone=backbone, **options)
    assert meta2["cached"] and meta2["path"] == meta["path"] and torch.equal(again.features, first.features)
    loaded, key, _ = load_features(meta["path"])  # plain weights_only load
    assert key == meta["key"] and loaded.names == first.names

    # another transform setting -> another key
    bigger = EvalSettings(image_size=20, crop_pct=1.0, num_workers=0)
    _, meta_tf = cached_features(run, data, backbone=backbone, **{**options, "settings": bigger})
    assert not meta_tf["cached"] and meta_tf["key"] != meta["key"]
    # the data changes (one more image) -> recomputed
    write_images(tmp_path / "extra", 1, size=16, classes=1)
    os.replace(tmp_path / "extra/class0/0000.png", data / "class0/9999.png")
    grown, meta_data = cached_features(run, data, backbone=backbone, **options)
    assert not meta_data["cached"] and len(grown) == 7
    # the checkpoint changes (new weights) -> recomputed
    _run_dir(tmp_path / "run", seed=1)
    _, meta_ckpt = cached_features(run, data, backbone=backbone, **options)
    assert not meta_ckpt["cached"] and meta_ckpt["checkpoint_sha256"] != meta["checkpoint_sha256"]


def test_explicit_out_file_and_layers(tmp_path):
    run = _run_dir(tmp_path / "run")
    data = write_images(tmp_path / "train", 4, size=16, classes=2)
    backbone = create_backbone_from_spec(SPEC)
    assert available_layers(backbone) == ["pooled", "stem", "s1", "s2", "s3", "s4"]
    feats, meta = cached_features(run, data, out=tmp_path / "f.pt", layer="s2", backbone=backbone, config=CONFIG)
    assert meta["path"] == str(tmp_path / "f.pt") and feats.dim == 56
    with pytest.raises(ValueError, match="unknown layer"):
        feature_extractor(backbone, "s9")


def test_check_pair_errors(tmp_path):
    from openseer.eval import Features

    def feats(classes, labels, dim=4):
        return Features(torch.randn(len(labels), dim), torch.tensor(labels), None, 0, classes=classes)

    with pytest.raises(DataError, match="at least 2 classes"):
        check_pair(feats(["a"], [0, 0]), feats(["a"], [0]))
    with pytest.raises(DataError, match="missing from train: 'c'"):
        check_pair(feats(["a", "b"], [0, 1]), feats(["a", "b", "c"], [0, 1, 2]))
    with pytest.raises(DataError, match="without any usable image: b"):
        check_pair(feats(["a", "b"], [0, 0]), feats(["a", "b"], [0, 1]))
    meta_a = {"checkpoint": "A", "checkpoint_sha256": "1", "settings": {}}
    meta_b = {"checkpoint": "B", "checkpoint_sha256": "2", "settings": {}}
    with pytest.raises(CheckpointError, match="different checkpoints"):
        check_pair(feats(["a", "b"], [0, 1]), feats(["a", "b"], [0, 1]), meta_a, meta_b)


def test_checkpoint_of_another_backbone_is_a_clear_error(tmp_path):
    from openseer.cli import main

    run = _run_dir(tmp_path / "run")
    (run / "backbone.json").write_text('{"timm_name": "resnet18"}')  # weights are regnetx_002's
    data = write_images(tmp_path / "train", 4, size=16, classes=2)
    with pytest.raises(CheckpointError, match="do not fit backbone"):
        cached_features(run, data, config=CONFIG)
    assert main(["embed", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path / "f.pt")]) == 2


def test_one_class_and_empty_class_folders_are_clear_errors(tmp_path, capsys):
    from openseer.cli import main

    run = _run_dir(tmp_path / "run")
    one = write_images(tmp_path / "one", 3, size=16, classes=1)
    assert main(["embed", "--checkpoint", str(run), "--data", str(one), "--out", str(tmp_path / "f.pt")]) == 2
    assert "at least 2 class" in capsys.readouterr().err
    train = write_images(tmp_path / "train", 4, size=16, classes=2)
    test = write_images(tmp_path / "test", 6, size=16, classes=3)
    (train / "class2").mkdir()  # an empty class folder in train: the class sets differ
    args = ["eval", "linear", "--checkpoint", str(run), "--train", str(train), "--test", str(test)]
    assert main([*args, "--image-size", "16", "--crop-pct", "1.0", "--num-workers", "0"]) == 2
    assert "missing from train: 'class2'" in capsys.readouterr().err
