"""The Python API is the CLI's code path: pretrain, load_backbone, embed, evaluate."""

from __future__ import annotations

import pytest
import torch

import openseer
from openseer.checkpoint import load_backbone as load_checkpoint_backbone
from openseer.config import ConfigError, parse_override
from tests.helpers import TINY_OVERRIDES, write_images


def _tiny_kwargs() -> dict:
    return {key.replace(".", "__"): value for key, value in map(parse_override, TINY_OVERRIDES)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    unlabelled = write_images(root / "unlabelled", 16, size=24)
    train = write_images(root / "train", 24, size=16, classes=3)
    test = write_images(root / "test", 9, size=16, classes=3, seed=1)
    summary = openseer.pretrain("demo", data=unlabelled, out=root / "run", train={"max_steps": 2}, **_tiny_kwargs())
    return summary, root / "run", train, test


def test_pretrain_writes_a_run(tiny):
    summary, run, _, _ = tiny
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert (run / "backbone.safetensors").is_file() and (run / "summary.json").is_file()
    assert "max_steps: 2" in (run / "config.yaml").read_text()


def test_load_backbone_and_embed_match_the_checkpoint(tiny):
    _, run, _, test = tiny
    backbone = openseer.load_backbone(run)
    reference, _ = load_checkpoint_backbone(run)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference(x))
    torch.testing.assert_close(openseer.embed(run, x), reference(x))
    feats = openseer.embed(run, test, device="cpu", num_workers=0)
    assert feats.features.shape == (9, backbone.num_features) and feats.classes == ["class0", "class1", "class2"]


def test_evaluate_knn_and_linear(tiny):
    _, run, train, test = tiny
    knn = openseer.evaluate(run, train, test, protocol="knn", ks=(1, 3), device="cpu", num_workers=0)
    assert set(knn["top1"]) >= {1, 3} or set(map(str, knn["top1"])) >= {"1", "3"}
    linear = openseer.evaluate(run, train, test, protocol="linear", epochs=2, device="cpu", num_workers=0)
    assert 0.0 <= linear["top1"] <= 100.0
    with pytest.raises(ConfigError, match="unknown protocol"):
        openseer.evaluate(run, train, test, protocol="nope")


def test_overrides_are_checked_like_the_command_line():
    with pytest.raises(ConfigError, match="unknown config key"):
        openseer.build_config("demo", train={"bach_size": 3})
    cfg = openseer.build_config("demo", data="x", train__max_steps=7, optim={"base_lr": 0.6})
    assert (cfg.train.max_steps, cfg.optim.base_lr, cfg.data.path) == (7, 0.6, "x")
    cfg2 = openseer.build_config(cfg, train={"max_steps": 9})
    assert cfg2.train.max_steps == 9 and cfg.train.max_steps == 7
