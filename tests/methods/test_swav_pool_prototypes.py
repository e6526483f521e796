"""``swav.num_prototypes: 0``: K from the pool's size and the batch (issue 23 item 7), resolved once, written to the
run's config.yaml, and the same on resume."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from openseer.cli import main
from openseer.config import load_config, run_info
from openseer.errors import ConfigError
from openseer.methods.swav import build, prototypes_for_pool
from openseer.train.loop import pretrain
from tests.helpers import TINY_OVERRIDES, write_images


def reference_k(images: int, global_batch: int, queue: int = 0) -> int:
    """Written from the rule's statement: the integer nearest sqrt(images), capped by the embeddings one Sinkhorn
    call spreads over (batch + queue), and never below 2."""
    k = int(math.floor(math.sqrt(images) + 0.5))
    return max(2, min(k, global_batch + queue))


@pytest.mark.parametrize(
    "images, batch, queue",
    [
        (50_000, 128, 0),
        (60_000, 256, 0),
        (1_437, 128, 0),
        (1_281_167, 4096, 0),
        (1_281_167, 256, 3840),
        (16, 8, 0),
        (3, 64, 0),
    ],
)
def test_the_rule_matches_its_statement(images, batch, queue):
    assert prototypes_for_pool(images, batch + queue) == reference_k(images, batch, queue)


def test_known_pools():
    assert prototypes_for_pool(50_000, 128) == 128  # CIFAR-10 at batch 128: capped by the batch
    assert prototypes_for_pool(1_437, 128) == 38  # sklearn digits' train split
    assert prototypes_for_pool(1_281_167, 4096) == 1132  # ImageNet-1k at SwAV's batch


def test_a_build_without_a_pool_takes_one_epoch_and_leaves_the_config_alone():
    cfg = load_config("cifar10", ["swav.num_prototypes=0", "model.backbone=regnetx_002", "swav.hidden_dims=[16]"])
    method = build(cfg, torch.nn.Identity(), run_info(cfg, dataset_size=400))
    k = reference_k(400 // 128 * 128, 128)
    assert method.prototypes.weight.shape[0] == k
    assert cfg.swav.num_prototypes == 0


@pytest.mark.parametrize("bad", ["-1", "1"])
def test_bad_values_are_one_line(bad):
    with pytest.raises(ConfigError, match="swav.num_prototypes"):
        load_config("cifar10", [f"swav.num_prototypes={bad}"])


def test_a_run_resolves_k_from_its_pool_writes_it_and_resumes(tmp_path):
    data = write_images(tmp_path / "imgs", 30, size=24)
    out = tmp_path / "run"
    argv = ["pretrain", "demo", *TINY_OVERRIDES, "swav.num_prototypes=0", "--data", str(data), "--out", str(out)]
    assert main([*argv, "--max-steps", "2"]) == 0
    k = reference_k(30, 8)  # 5: sqrt(30) = 5.48, under the batch of 8
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["swav"]["num_prototypes"] == k
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["model"]["prototypes.weight"].shape[0] == k
    # the same command line (still 0) resumes: the pool gives the same K, so the configs agree
    assert main([*argv, "--max-steps", "3"]) == 0
    assert torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["step"] == 3


def test_the_callers_config_is_not_changed(tmp_path):
    """The Python API's Config object stays as given (``0``): a second run on another pool derives its own K."""
    data = write_images(tmp_path / "imgs", 30, size=24)
    cfg = load_config("demo", [*TINY_OVERRIDES, "swav.num_prototypes=0", f"data.path={data}", "train.max_steps=1"])
    pretrain(cfg, tmp_path / "run")
    assert cfg.swav.num_prototypes == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["swav"]["num_prototypes"] == 5
