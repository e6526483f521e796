"""``--init`` reaches every backbone tower a method declares, EMA copies included (issue 21 item 8).

The reference here is independent of the declaration: every submodule of the built method whose class is the
backbone's class is a copy of the backbone (BYOL's ``target_backbone``, MoCo v3's ``momentum_backbone``, DINO's
``teacher.backbone``), and each must hold the imported tensors after ``init_method_from``.
"""

from __future__ import annotations

import pytest
import torch

from openseer.config import load_config
from openseer.methods import METHODS
from openseer.methods.registry import BUILTIN
from openseer.models.backbone import create_backbone_from_spec
from openseer.weights import init_method_from
from tests.helpers import run_info
from tests.weights import foreign

# one CIFAR preset per method (its method section); the backbone is a 4-block RegNet built here
PRESETS = {
    "swav": "cifar10",
    "dino": "dino-cifar10-regnet",
    "simclr": "simclr-cifar10",
    "mocov3": "mocov3-cifar10",
    "byol": "byol-cifar10",
    "simsiam": "simsiam-cifar10",
    "barlowtwins": "barlowtwins-cifar10",
    "vicreg": "vicreg-cifar10",
    "deepclusterv2": "deepclusterv2-cifar10",
}
# the EMA copies each reference keeps (BYOL target network, MoCo v3 momentum encoder, DINO teacher)
EMA_BACKBONES = {"byol": {"target_backbone"}, "mocov3": {"momentum_backbone"}, "dino": {"teacher.backbone"}}


def _build(name: str):
    cfg = load_config(PRESETS[name])
    backbone = create_backbone_from_spec(foreign.TINY_REGNET_SPEC)
    return METHODS[name].build(cfg, backbone, run_info(128)), type(backbone)


def test_every_builtin_method_has_a_preset_here():
    assert set(PRESETS) == set(BUILTIN)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_init_gives_every_backbone_tower_the_imported_weights(name, tmp_path):
    method, backbone_class = _build(name)
    method.check_towers()
    source = foreign.randomise(create_backbone_from_spec(foreign.TINY_REGNET_SPEC), seed=7)
    expected = {k: v.clone() for k, v in source.state_dict().items()}
    torch.save(expected, tmp_path / "backbone.pt")
    copies = {path for path, m in method.named_modules() if type(m) is backbone_class}
    assert copies == {"backbone"} | EMA_BACKBONES.get(name, set())
    assert {t.path for t, _ in method.tower_modules("backbone")} == copies  # the declaration names them all
    init_method_from(method, tmp_path / "backbone.pt", strict=False, log=lambda line: None)
    for path in copies:
        state = method.get_submodule(path).state_dict()
        assert state.keys() == expected.keys(), path
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=f"{name}: {path}.{key}")
