"""setup_run builds the run's RunInfo once: the method is built with it and the training step carries the same
object, whose sizes are derive()'s."""

from __future__ import annotations

import pytest

from openseer.config import derive, load_config
from openseer.methods.registry import METHODS, MethodEntry, register_method
from openseer.train.setup import setup_run
from tests.helpers import write_images
from tests.train.test_toy_method import ToyConfig, TwoViewCosine

BUILT_WITH = []


def _build(cfg, backbone, info):
    BUILT_WITH.append(info)
    return TwoViewCosine(backbone, cfg.toy_info)


@pytest.fixture(autouse=True)
def recording_method():
    register_method(MethodEntry("toy_info", ToyConfig, _build))
    yield
    METHODS.pop("toy_info", None)
    BUILT_WITH.clear()


def test_the_method_and_the_training_step_share_one_run_info(tmp_path):
    data = write_images(tmp_path / "imgs", 20, size=16)
    overrides = [
        "method=toy_info",
        f"data.path={data}",
        "data.num_workers=0",
        "model.regnet={depth: 6, w0: 8, wa: 10.0, wm: 1.8, group_size: 8}",
        "model.channels_last=false",
        "aug={global_size: 16, local_crops: 0, blur_prob: 0.0}",
        "train={batch_size: 4, accumulate_steps: 2, epochs: 3, precision: fp32}",
    ]
    cfg = load_config(None, overrides)
    run = setup_run(cfg, tmp_path / "run", resume=False)
    (info,) = BUILT_WITH
    assert run.trainer.info is info
    d = derive(cfg, 20, 1)  # 20 images // (4 x 1 process x 2 micro-batches) = 2 steps per epoch
    assert (info.global_batch, info.local_batch, info.accumulate_steps) == (8, 4, 2)
    assert (
        (info.steps_per_epoch, info.total_steps, info.world_size) == (d.steps_per_epoch, d.total_steps, 1) == (2, 6, 1)
    )
