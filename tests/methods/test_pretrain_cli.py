"""Barlow Twins, VICReg and DeepCluster-v2 through `openseer pretrain <method>-cifar10` on tiny data: they build,
train, log their scalars, and a run interrupted mid-epoch resumes to the per-step losses of an uninterrupted one
(DeepCluster-v2 through its saved memory bank and assignments)."""

import json

import pytest

from openseer.config import ConfigError, load_config
from openseer.train import pretrain
from tests.helpers import write_images

COMMON = [
    "aug.global_size=24",
    "aug.local_size=16",
    "model.backbone=regnetx_002",
    "train.batch_size=8",
    "train.epochs=3",
    "train.log_every=1",
    "optim.warmup_epochs=0.5",
    "data.num_workers=0",
]
TINY = {
    "barlowtwins": ["barlowtwins.projector_dims=[32,32]"],
    "vicreg": ["vicreg.projector_dims=[32,32]"],
    "deepclusterv2": [
        "aug.local_crops=2",
        "deepclusterv2.hidden_dims=[32]",
        "deepclusterv2.output_dim=16",
        "deepclusterv2.num_prototypes=[4,5]",
    ],
}
SCALARS = {"barlowtwins": "on_diag", "vicreg": "embedding_std", "deepclusterv2": "known_targets"}


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", sorted(TINY))
def test_pretrain_and_resume_after_an_interruption(method, tmp_path):
    data = write_images(tmp_path / "imgs", 16, size=24)  # 2 steps per epoch, 6 steps
    cfg = load_config(f"{method}-cifar10", [*COMMON, *TINY[method], f"data.path={data}"])
    full = pretrain(cfg, tmp_path / "full")
    assert full["status"] == "completed" and full["steps"] == 6
    losses = _losses(tmp_path / "full")
    last = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    assert SCALARS[method] in json.dumps(last)  # the method's scalars are logged

    def stop_at_3(step, loss):
        if step == 3:  # mid-epoch 1 (DeepCluster-v2: after its first k-means)
            raise KeyboardInterrupt

    part = pretrain(cfg, tmp_path / "part", on_step=stop_at_3)
    assert part["status"] == "interrupted"
    resumed = pretrain(cfg, tmp_path / "part")
    assert resumed["status"] == "completed"
    assert _losses(tmp_path / "part") == pytest.approx(losses, rel=1e-5, abs=1e-6)
    if method == "deepclusterv2":
        assert losses[:2] == [0.0, 0.0] and losses[2] > 0  # epoch 0 fills the memory bank


@pytest.mark.parametrize("method", ["barlowtwins", "vicreg"])
def test_a_global_batch_of_one_is_a_one_line_error(method, tmp_path):
    with pytest.raises(ConfigError, match="at least 2 images"):
        load_config(f"{method}-cifar10", ["train.batch_size=1"])
    with pytest.raises(ConfigError, match="exactly 2 views"):
        load_config(f"{method}-cifar10", ["aug.local_crops=2"])
