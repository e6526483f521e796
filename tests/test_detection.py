"""The pretrained backbone in torchvision's Faster R-CNN: multi-scale maps, FPN, one finite training step."""

from __future__ import annotations

import pytest
import torch
from timm.models.regnet import RegNet, RegNetCfg
from torchvision.models.detection import FasterRCNN

from openseer.api import load_backbone
from openseer.checkpoint import export_backbone
from openseer.detection import fpn_backbone
from openseer.weights import WeightsError
from tests.weights import foreign


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    model = foreign.randomise(RegNet(RegNetCfg(**foreign.TINY_REGNET), num_classes=0), 21)
    export_backbone(run, model.state_dict(), foreign.TINY_REGNET_SPEC)
    return run


def test_features_only_gives_the_stage_maps(run_dir):
    maps_model = load_backbone(run_dir, features_only=True)
    pooled = load_backbone(run_dir)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = maps_model(x)
        last = pooled.forward_features(x)
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2]  # strides 2, 4, 8, 16, 32
    assert [m.shape[1] for m in maps] == [i["num_chs"] for i in pooled.feature_info]
    torch.testing.assert_close(maps[-1], last)  # the deepest map is what the pooled head averages
    torch.testing.assert_close(maps[-1].mean((2, 3)), pooled(x))


def test_faster_rcnn_training_step_on_synthetic_boxes(run_dir):
    torch.manual_seed(0)
    backbone = fpn_backbone(run_dir, out_channels=16)
    detector = FasterRCNN(backbone, num_classes=3, min_size=64, max_size=64)
    detector.train()
    images = [torch.rand(3, 64, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([1, 2])}
    ]
    losses = detector(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    before = backbone.body.s4.b1.conv1.conv.weight.detach().clone()
    total.backward()
    torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=0.01).step()
    assert not torch.equal(before, backbone.body.s4.b1.conv1.conv.weight)  # gradients reach the backbone
    detector.eval()
    with torch.no_grad():
        (pred,) = detector(images)
    assert set(pred) == {"boxes", "labels", "scores"}


def test_frozen_stages_and_bad_stage_indices(run_dir):
    backbone = fpn_backbone(run_dir, trainable_stages=2)
    trainable = {n.split(".")[1] for n, p in backbone.named_parameters() if p.requires_grad and n.startswith("body.")}
    assert trainable == {"s3", "s4"}
    with pytest.raises(WeightsError, match="feature stages 0..4"):
        fpn_backbone(run_dir, stages=(1, 5))
