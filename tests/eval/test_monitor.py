"""The online kNN monitor: due every N steps, no effect on RNG or train mode, clear on bad data."""

import pytest
import torch
from torch import nn

from openseer.data import DataError
from openseer.eval.monitor import KnnMonitor
from tests.helpers import write_images


class _Colour(nn.Module):
    """Mean colour per channel: separates the helper's per-class colours; BatchNorm checks eval mode."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.norm(x.mean(dim=(2, 3)))


def test_monitor_scores_and_is_due_every_n_steps(tmp_path):
    train = write_images(tmp_path / "train", 12, size=16, classes=3)
    test = write_images(tmp_path / "test", 6, size=16, classes=3, seed=1)
    monitor = KnnMonitor(str(train), str(test), 16, 1.0, (0.5,) * 3, (0.25,) * 3, every=3, k=3)
    backbone = _Colour().train()
    state = torch.get_rng_state()
    ran = {step: monitor(step, step == 7, backbone) for step in range(1, 8)}
    assert [s for s, r in ran.items() if r] == [3, 6, 7]
    assert ran[3]["monitor_knn_top1"] == 1.0
    assert backbone.training and torch.equal(torch.get_rng_state(), state)
    assert int(backbone.norm.num_batches_tracked) == 0  # eval mode: running statistics untouched


def test_monitor_caps_are_class_balanced(tmp_path):
    train = write_images(tmp_path / "train", 12, size=16, classes=3)
    monitor = KnnMonitor(str(train), str(train), 16, 1.0, (0.5,) * 3, (0.25,) * 3, max_train=6, max_test=3)
    assert torch.bincount(monitor.train_labels).tolist() == [2, 2, 2]
    assert torch.bincount(monitor.test_labels).tolist() == [1, 1, 1]


def test_monitor_rejects_mismatched_classes(tmp_path):
    train = write_images(tmp_path / "train", 6, size=16, classes=2)
    test = write_images(tmp_path / "test", 6, size=16, classes=3)
    with pytest.raises(DataError, match="missing from train"):
        KnnMonitor(str(train), str(test), 16, 1.0, (0.5,) * 3, (0.25,) * 3)


def test_monitor_settings_come_from_the_config_and_are_saved_with_the_run(tmp_path):
    import yaml

    from openseer.config import ConfigError, load_config
    from openseer.train import pretrain
    from tests.helpers import TINY_OVERRIDES

    labelled = write_images(tmp_path / "labelled", 6, size=16, classes=3)
    with pytest.raises(ConfigError, match="monitor.train and monitor.test"):
        load_config("demo", [f"monitor.train={labelled}"])
    with pytest.raises(ConfigError, match="monitor.every=0 must be positive"):
        load_config("demo", ["monitor.every=0"])
    data = write_images(tmp_path / "imgs", 16)
    cfg = load_config(
        "demo",
        [
            *TINY_OVERRIDES,
            f"data.path={data}",
            "train.max_steps=2",
            f"monitor.train={labelled}",
            f"monitor.test={labelled}",
            "monitor.every=2",
            "monitor.k=3",
        ],
    )
    pretrain(cfg, tmp_path / "run")
    rows = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if line]
    assert "monitor_knn_top1" in rows[-1] and "monitor_knn_top1" not in rows[0]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["monitor"]["every"] == 2 and saved["monitor"]["test"] == str(labelled)
