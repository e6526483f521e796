"""Fine-tuning (openseer.eval.finetune): the lr of every step follows the cosine decay it always had, for both
parameter groups, and the result describes the run."""

from __future__ import annotations

import math

import torch
from torch import nn

from openseer.eval.finetune import finetune
from openseer.eval.settings import EvalSettings
from tests.helpers import write_images

SETTINGS = EvalSettings(image_size=16, crop_pct=1.0, batch_size=8, num_workers=0, device="cpu")


class _Tiny(nn.Module):
    """A conv + batch-norm + pooled backbone on 16 px images (``num_features`` as timm models have)."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


def test_every_step_runs_at_the_cosine_lr_of_both_groups(tmp_path, monkeypatch):
    train = write_images(tmp_path / "train", 24, size=16, classes=3)
    test = write_images(tmp_path / "test", 6, size=16, classes=3, seed=1)
    seen: list[list[float]] = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen.append([group["lr"] for group in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    result = finetune(
        _Tiny(), {}, str(train), str(test), fraction=0.5, epochs=2, lr_backbone=0.02, lr_head=0.3, batch_size=4,
        settings=SETTINGS,
    )  # fmt: skip
    # 4 of 8 images per class = 12 images, batches of 4 (the last partial batch dropped): 3 steps an epoch
    total = 2 * 3
    reference = [[peak * 0.5 * (1 + math.cos(math.pi * s / total)) for peak in (0.02, 0.3)] for s in range(total)]
    assert len(seen) == total
    for got, want in zip(seen, reference, strict=True):
        assert all(math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-15) for g, w in zip(got, want, strict=True))
    assert seen[0] == [0.02, 0.3] and seen[-1][1] < 0.3 * 0.1  # starts at the peak, ends near 0
    assert result["num_train"] == 12 and result["num_test"] == 6 and result["epochs"] == 2
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0 and math.isfinite(result["final_train_loss"])
