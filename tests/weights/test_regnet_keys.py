"""The one RegNet key table (openseer/weights/regnet_keys.py): import and export read the same rows, so
export -> import gives back the same tensors under the same names, in every layout."""

import pytest
import timm
import torch

from openseer.weights import export, plain, vissl
from openseer.weights.regnet_keys import BLOCKS, export_table, import_table

# written out by hand from each project's module names (torchvision regnet.py, vissl regnet trunk, detectron2
# regnet.py); timm name -> the layout's name
BY_HAND = {
    "torchvision": [
        ("stem.conv.weight", "stem.0.weight"),
        ("s1.b1.downsample.conv.weight", "trunk_output.block1.block1-0.proj.0.weight"),
        ("s2.b3.conv2.bn.running_var", "trunk_output.block2.block2-2.f.b.1.running_var"),
        ("s4.b1.se.fc2.bias", "trunk_output.block4.block4-0.f.se.fc2.bias"),
    ],
    "vissl": [
        ("stem.bn.weight", "_feature_blocks.conv1.stem.1.weight"),
        ("s1.b1.downsample.bn.bias", "_feature_blocks.res2.block1-0.bn.bias"),
        ("s3.b8.conv3.bn.weight", "_feature_blocks.res4.block3-7.f.final_bn.weight"),
        ("s2.b2.se.fc1.weight", "_feature_blocks.res3.block2-1.f.se.excitation.0.weight"),
    ],
    "detectron2": [
        ("stem.conv.weight", "stem.conv.weight"),
        ("s2.b3.conv1.bn.running_mean", "s2.b3.f.a_bn.running_mean"),
        ("s1.b1.se.fc2.weight", "s1.b1.f.se.f_ex.2.weight"),
        ("s4.b2.conv3.conv.weight", "s4.b2.f.c.weight"),
    ],
}


@pytest.mark.parametrize("layout", sorted(BY_HAND))
def test_both_directions_match_names_written_by_hand(layout):
    to_timm, from_timm = import_table(layout, "import"), export_table(layout, "export")
    for timm_key, layout_key in BY_HAND[layout]:
        assert from_timm.rename(timm_key) == layout_key
        assert to_timm.rename(layout_key) == timm_key


def test_vissl_fsdp_part_level_imports_too():
    table = import_table("vissl", "VISSL RegNet trunk")
    assert table.rename("_feature_blocks.res4.block3-part1.block3-7.f.c.weight") == "s3.b8.conv3.conv.weight"


@pytest.mark.parametrize("layout", sorted(BLOCKS))
@pytest.mark.parametrize("arch", ["regnety_002", "regnetx_002"])
def test_export_then_import_gives_the_same_tensors(layout, arch):
    state = timm.create_model(arch, num_classes=0).state_dict()
    exported, dropped = export_table(layout, "export").apply(state, arch)
    assert not dropped and set(exported).isdisjoint(state) == (layout != "detectron2")  # d2: timm stem names
    back, dropped = import_table(layout, "import").apply(exported, arch)
    assert not dropped and list(back) == list(state)
    for key, tensor in state.items():
        assert back[key] is tensor


def test_the_modules_tables_are_built_from_the_one_table():
    state = timm.create_model("regnety_002", num_classes=0).state_dict()
    tv, _ = export.TIMM_TO_TORCHVISION_REGNET.apply(state, "x")
    assert set(tv) == set(export.torchvision_model({"timm_name": "regnety_002"}).state_dict()) - {"fc.weight"}
    back, _ = plain.TORCHVISION_REGNET.apply({**tv, "fc.weight": torch.zeros(1)}, "x")
    assert set(back) == set(state)
    d2, _ = export.TIMM_TO_DETECTRON2_REGNET.apply(state, "x")
    assert "s1.b1.f.a_bn.weight" in d2
    trunk, _ = export_table("vissl", "x").apply(state, "x")
    assert set(vissl.REGNET_TRUNK.apply(trunk, "x")[0]) == set(state)
