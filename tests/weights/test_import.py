"""Importing foreign checkpoints: openseer must reproduce the original models' outputs.

The originals (torchvision RegNet/ResNet trunks, SwAV/VISSL/DINO heads written after the reference code) live in
``tests/weights/foreign.py`` and are saved in each project's own file layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openseer.methods.base import Method, Tower
from openseer.methods.swav import Config as SwAVConfig
from openseer.methods.swav import SwAV
from openseer.models.backbone import create_backbone_from_spec
from openseer.weights import backbone_from_source, init_method_from, read_source
from tests.weights import foreign

X32 = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _swav_method(spec, hidden=32, out=16, k=10) -> SwAV:
    cfg = SwAVConfig(hidden_dims=[hidden], output_dim=out, num_prototypes=k, head_batch_norm=True)
    return SwAV(create_backbone_from_spec(spec), cfg)


def _check_swav_outputs(method: SwAV, trunk: nn.Module, head: foreign.SwAVHead) -> None:
    method.eval()
    with torch.no_grad():
        feats = trunk(X32)
        torch.testing.assert_close(method.backbone(X32), feats, rtol=1e-4, atol=1e-5)
        z_ref, scores_ref = head(feats)
        z = method.head(feats)
        torch.testing.assert_close(z, z_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(method.prototypes(z), scores_ref, rtol=1e-4, atol=1e-5)
        # training mode: batch statistics (the folded Linear bias cancels exactly there too)
        method.head.train()
        head.train()
        torch.testing.assert_close(method.head(feats), head(feats)[0], rtol=1e-4, atol=1e-5)


def test_vissl_seer_layout_reproduces_trunk_head_and_prototypes(tmp_path):
    trunk = foreign.torchvision_tiny_regnet()
    head = foreign.SwAVHead(trunk_dim(trunk), 32, 16, 10)
    path = foreign.write_vissl(tmp_path / "seer.torch", trunk, head)
    method = _swav_method(foreign.TINY_REGNET_SPEC)
    imported = init_method_from(method, str(path), strict=True, log=lambda s: None)
    assert imported.format == "vissl"
    _check_swav_outputs(method, trunk, head)


def test_vissl_fsdp_trunk_layout(tmp_path):
    """regnet_v2 (VISSL's FSDP RegNet, SEER 10B) adds a block-group level to every block name."""
    trunk = foreign.torchvision_tiny_regnet(seed=3)
    path = foreign.write_vissl(tmp_path / "seer_fsdp.torch", trunk, None, fsdp_parts=True)
    backbone, imported = backbone_from_source(path, spec=foreign.TINY_REGNET_SPEC)
    assert imported.heads == {}
    with torch.no_grad():
        torch.testing.assert_close(backbone(X32), trunk(X32), rtol=1e-4, atol=1e-5)


def test_swav_training_checkpoint_and_model_zoo_file(tmp_path):
    trunk = foreign.torchvision_resnet18()
    head = foreign.SwAVHead(512, 32, 16, 10)
    for zoo in (False, True):
        path = foreign.write_swav(tmp_path / f"swav{zoo}.pth.tar", trunk, head, training_checkpoint=not zoo)
        method = _swav_method({"timm_name": "resnet18"})
        assert init_method_from(method, path, log=lambda s: None).format == "swav"
        _check_swav_outputs(method, trunk, head)
        head.eval()


class _DinoLike(Method):
    """The shape of a DINO method: a backbone and DINO's head with torch's current weight_norm."""

    towers = (Tower("backbone"), Tower("head", "head"))

    def __init__(self):
        super().__init__()
        self.backbone = create_backbone_from_spec({"timm_name": "resnet18"})
        self.head = nn.Module()
        self.head.mlp = nn.Sequential(nn.Linear(512, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8))
        self.head.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(8, 20, bias=False))
        self.register_buffer("center", torch.zeros(1, 20))

    def forward_head(self, x):
        return self.head.last_layer(F.normalize(self.head.mlp(x), dim=-1))


def test_dino_checkpoint_teacher_backbone_head_and_center(tmp_path):
    trunk = foreign.torchvision_resnet18(seed=5)
    head = foreign.DINOHead(512, 32, 8, 20)
    path = foreign.write_dino(tmp_path / "checkpoint.pth", trunk, head)
    method = _DinoLike()
    imported = init_method_from(method, f"dino:{path}", log=lambda s: None)
    assert imported.format == "dino"
    method.eval()
    with torch.no_grad():
        feats = trunk(X32)
        torch.testing.assert_close(method.backbone(X32), feats, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(method.forward_head(feats), head(feats), rtol=1e-4, atol=1e-5)
    raw = torch.load(path, weights_only=False)
    torch.testing.assert_close(method.center, raw["dino_loss"]["center"])


def test_dino_backbone_alone_for_evaluation(tmp_path):
    trunk = foreign.torchvision_resnet18(seed=6)
    path = foreign.write_dino(tmp_path / "checkpoint.pth", trunk, foreign.DINOHead(512, 16, 8, 12))
    backbone, imported = backbone_from_source(path)  # architecture inferred from the weights
    assert imported.spec == {"timm_name": "resnet18"}
    with torch.no_grad():
        torch.testing.assert_close(backbone(X32), trunk(X32), rtol=1e-4, atol=1e-5)


def test_torchvision_regnet_and_resnet_state_dicts(tmp_path):
    trunk = foreign.torchvision_tiny_regnet(seed=7)
    state = dict(trunk.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(10, 40), torch.zeros(10)  # an ImageNet-style classifier
    torch.save(state, tmp_path / "tv_regnet.pth")
    backbone, imported = backbone_from_source(tmp_path / "tv_regnet.pth", spec=foreign.TINY_REGNET_SPEC)
    assert imported.format == "torchvision"
    with torch.no_grad():
        torch.testing.assert_close(backbone(X32), trunk(X32), rtol=1e-4, atol=1e-5)

    resnet = foreign.torchvision_resnet18(seed=8)
    full = torchvision_resnet_with_fc(resnet)
    torch.save(full.state_dict(), tmp_path / "tv_resnet.pth")
    backbone, imported = backbone_from_source(f"torchvision:{tmp_path / 'tv_resnet.pth'}")
    assert imported.spec == {"timm_name": "resnet18"}
    with torch.no_grad():
        torch.testing.assert_close(backbone(X32), resnet(X32), rtol=1e-4, atol=1e-5)


def test_timm_state_dict_drops_the_classifier(tmp_path):
    import timm

    model = timm.create_model("resnet18", num_classes=7)
    foreign.randomise(model, 9)
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    backbone, imported = backbone_from_source(tmp_path / "timm.pth")
    assert imported.spec == {"timm_name": "resnet18"} and any("classifier" in n for n in imported.notes)
    with torch.no_grad():
        torch.testing.assert_close(backbone(X32), model.forward_head(model.forward_features(X32), pre_logits=True))


def test_openseer_run_dir_gives_backbone_and_heads(tmp_path):
    from openseer.checkpoint import export_backbone, save_checkpoint

    src = _swav_method(foreign.TINY_REGNET_SPEC)
    foreign.randomise(src, 11)
    run = tmp_path / "run"
    save_checkpoint(
        run / "checkpoints" / "last.pt", {"model": src.state_dict(), "backbone_spec": foreign.TINY_REGNET_SPEC}
    )
    export_backbone(run, src.backbone.state_dict(), foreign.TINY_REGNET_SPEC)
    dst = _swav_method(foreign.TINY_REGNET_SPEC)
    init_method_from(dst, run, log=lambda s: None)
    for k, v in src.state_dict().items():
        if torch.is_tensor(v):
            torch.testing.assert_close(dst.state_dict()[k], v, msg=k)
    assert read_source(run, with_heads=False).heads == {}  # evaluation reads the exported backbone


def trunk_dim(trunk: nn.Module) -> int:
    with torch.no_grad():
        return trunk(torch.zeros(1, 3, 32, 32)).shape[1]


def torchvision_resnet_with_fc(resnet: nn.Module) -> nn.Module:
    import torchvision

    full = torchvision.models.resnet18(num_classes=5)
    full.load_state_dict({**resnet.state_dict(), "fc.weight": torch.zeros(5, 512), "fc.bias": torch.zeros(5)})
    return full
