"""SOURCE resolution: timm tags through timm's own hub cache, the key tables, and one-line errors for bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from openseer.methods.swav import Config as SwAVConfig
from openseer.methods.swav import SwAV
from openseer.models.backbone import create_backbone_from_spec
from openseer.weights import WeightsError, backbone_from_source, dino, init_method_from, plain, read_source, swav, vissl
from tests.weights import foreign

TAG = "regnetx_002.pycls_in1k"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An offline Hugging Face cache (HF_HUB_CACHE) holding one timm model, in the hub's own layout."""
    model = foreign.randomise(timm.create_model("regnetx_002"), 4)
    repo = tmp_path / "hub" / f"models--timm--{TAG}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return model


def test_timm_tag_from_the_hub_cache(offline_hub):
    x = torch.randn(2, 3, 32, 32)
    backbone, imported = backbone_from_source(f"timm:{TAG}")
    assert imported.spec == {"timm_name": "regnetx_002"}
    with torch.no_grad():
        ref = offline_hub.eval().forward_head(offline_hub.forward_features(x), pre_logits=True)
        torch.testing.assert_close(backbone(x), ref)


def test_timm_tag_with_a_local_file(tmp_path, offline_hub):
    model = foreign.randomise(timm.create_model("regnetx_002"), 5)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    imported = read_source(f"timm:{TAG}@{tmp_path / 'w.pth'}")  # pretrained_cfg_overlay=dict(file=...)
    torch.testing.assert_close(imported.backbone["stem.conv.weight"], model.stem.conv.weight)


def test_timm_tag_not_downloadable_is_one_line_naming_the_tag(offline_hub):
    with pytest.raises(WeightsError) as e:
        read_source("timm:resnet18.a1_in1k")
    msg = str(e.value)
    assert "\n" not in msg and "timm:resnet18.a1_in1k" in msg and "HF_HUB_CACHE" in msg
    with pytest.raises(WeightsError, match="not a timm model"):
        read_source("timm:resnet_does_not_exist")


@pytest.mark.parametrize(
    ("table", "key", "expected"),
    [
        (vissl.REGNET_TRUNK, "_feature_blocks.conv1.stem.0.weight", "stem.conv.weight"),
        (vissl.REGNET_TRUNK, "_feature_blocks.res2.block1-0.proj.weight", "s1.b1.downsample.conv.weight"),
        (vissl.REGNET_TRUNK, "_feature_blocks.res3.block2-3.bn.running_var", "s2.b4.downsample.bn.running_var"),
        (vissl.REGNET_TRUNK, "_feature_blocks.res5.block4-0.f.se.excitation.2.bias", "s4.b1.se.fc2.bias"),
        (vissl.REGNET_TRUNK, "_feature_blocks.res4.block3-part1.block3-7.f.final_bn.weight", "s3.b8.conv3.bn.weight"),
        (vissl.REGNET_TRUNK, "_feature_blocks.res2.block1-1.f.c.weight", "s1.b2.conv3.conv.weight"),
        (vissl.RESNET_TRUNK, "_feature_blocks.layer3.5.bn2.weight", "layer3.5.bn2.weight"),
        (vissl.SWAV_HEAD, "0.projection_head.3.weight", "head.mlp.3.weight"),
        (vissl.SWAV_HEAD, "0.prototypes0.weight", "prototypes.weight"),
        (vissl.SWAV_HEAD, "0.clf.0.weight", None),
        (swav.TABLE, "layer4.1.downsample.0.weight", "backbone.layer4.1.downsample.0.weight"),
        (swav.TABLE, "projection_head.weight", "head.mlp.0.weight"),
        (dino.TABLE, "backbone.blocks.11.attn.qkv.weight", "backbone.blocks.11.attn.qkv.weight"),
        (dino.TABLE, "head.last_layer.weight_g", "head.last_layer.weight_g"),
        (plain.TORCHVISION_REGNET, "trunk_output.block2.block2-1.f.b.1.bias", "s2.b2.conv2.bn.bias"),
        (plain.TORCHVISION_REGNET, "fc.weight", None),
    ],
)
def test_key_tables(table, key, expected):
    assert table.rename(key) == expected


def test_unknown_key_in_a_known_layout_is_refused(tmp_path):
    trunk = foreign.torchvision_tiny_regnet()
    path = foreign.write_vissl(tmp_path / "seer.torch", trunk, None)
    state = torch.load(path, weights_only=True)
    state["classy_state_dict"]["base_model"]["model"]["trunk"]["_feature_blocks.res2.block1-0.f.d.weight"] = torch.ones(
        1
    )
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"block1-0\.f\.d\.weight"):
        read_source(path)


def _one_line(fn, *match: str) -> str:
    with pytest.raises(WeightsError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for m in match:
        assert m in msg, msg
    return msg


def test_bad_inputs_are_one_line_errors_naming_file_expected_and_found(tmp_path):
    # unknown format: a dict without tensors
    torch.save({"hello": "world"}, tmp_path / "strings.pt")
    _one_line(lambda: read_source(tmp_path / "strings.pt"), "strings.pt", "expected", "found a dict")
    # a truncated file
    torch.save(foreign.torchvision_tiny_regnet().state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    _one_line(lambda: read_source(tmp_path / "cut.pt"), "cut.pt", "corrupt or truncated", "expected")
    (tmp_path / "empty.pt").write_bytes(b"")
    _one_line(lambda: read_source(tmp_path / "empty.pt"), "empty.pt", "empty")
    # a pickle that is not weights (would run code): refused by weights_only
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Path("/etc/passwd")))
    _one_line(lambda: read_source(tmp_path / "evil.pt"), "evil.pt", "refused", "needs code")
    # the wrong format given explicitly
    _one_line(lambda: read_source(f"vissl:{tmp_path / 'full.pt'}"), "full.pt", "VISSL", "found")
    _one_line(lambda: read_source(f"dino:{tmp_path / 'full.pt'}"), "full.pt", "dino", "found")
    _one_line(lambda: read_source(tmp_path / "missing.pt"), "missing.pt", "does not exist")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    _one_line(lambda: read_source(tmp_path / "bad.safetensors"), "bad.safetensors", "safetensors")


def test_another_architecture_names_the_first_mismatch(tmp_path):
    resnet = timm.create_model("resnet18", num_classes=0)
    torch.save(resnet.state_dict(), tmp_path / "r18.pt")
    msg = _one_line(
        lambda: backbone_from_source(tmp_path / "r18.pt", spec={"timm_name": "resnet34"}), "r18.pt", "does not fit"
    )
    assert "layer1.2" in msg  # resnet34 has 3 blocks in layer1, resnet18 two
    narrow = foreign.torchvision_tiny_regnet()
    torch.save(narrow.state_dict(), tmp_path / "tiny.pt")
    wider = {"regnet_cfg": {**foreign.TINY_REGNET, "w0": 16}}
    _one_line(lambda: backbone_from_source(tmp_path / "tiny.pt", spec=wider), "shape mismatch at", "tiny.pt")
    # no spec: the closest architecture and the differing keys are named (as for timm's SEER-256GF mismatch)
    _one_line(lambda: backbone_from_source(tmp_path / "tiny.pt"), "no timm architecture matches", "closest is")


def test_strict_false_loads_what_fits_and_prints_the_rest(tmp_path):
    trunk = foreign.torchvision_tiny_regnet()
    head = foreign.SwAVHead(40, 32, 16, 10)
    path = foreign.write_vissl(tmp_path / "seer.torch", trunk, head)
    cfg = SwAVConfig(hidden_dims=[32], output_dim=16, num_prototypes=30)  # other number of prototypes
    method = SwAV(create_backbone_from_spec(foreign.TINY_REGNET_SPEC), cfg)
    _one_line(lambda: init_method_from(method, path, log=lambda s: None), "prototypes.weight", "[10, 16]", "[30, 16]")
    lines: list[str] = []
    before = method.prototypes.weight.detach().clone()
    init_method_from(method, path, strict=False, log=lines.append)
    assert any("shape mismatch" in line and "prototypes.weight" in line for line in lines)
    torch.testing.assert_close(method.prototypes.weight, before)  # left as initialised
    torch.testing.assert_close(method.head.mlp[3].weight, head.projection_head[3].weight)  # the rest loaded


def test_source_without_heads_keeps_heads_and_says_so(tmp_path, offline_hub):
    method = SwAV(
        create_backbone_from_spec({"timm_name": "regnetx_002"}),
        SwAVConfig(hidden_dims=[16], output_dim=8, num_prototypes=5),
    )
    lines: list[str] = []
    init_method_from(method, f"timm:{TAG}", log=lines.append)
    assert any("heads stay randomly initialised" in line for line in lines)
    torch.testing.assert_close(method.backbone.stem.conv.weight, offline_hub.stem.conv.weight)
