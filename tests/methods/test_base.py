"""The method contract (openseer/methods/base.py): the tower declaration (``Method.towers``, ``ema_pairs``,
``check_towers``) and the parameter grouping (tags -> optimizer group dicts)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from openseer.config import load_config
from openseer.errors import ConfigError
from openseer.methods import METHODS
from openseer.methods.base import Method, Tower, optimizer_groups, split_groups
from openseer.models.backbone import build_backbone
from openseer.ops.ema import ema_update_pairs
from tests.helpers import run_info


class Pair(Method):
    """A backbone, a head and EMA copies of both (``target_head`` may be built with another shape)."""

    name = "pair"
    towers = (
        Tower("backbone"),
        Tower("head", "head"),
        Tower("target.backbone", ema_of="backbone"),
        Tower("target.head", "head", ema_of="head"),
    )

    def __init__(self, target_head: nn.Module | None = None):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
        self.head = nn.Linear(6, 3)
        self.target = nn.Module()
        self.target.backbone = copy.deepcopy(self.backbone)
        self.target.head = target_head if target_head is not None else copy.deepcopy(self.head)
        self.target.requires_grad_(False)


def _one_line(fn, *fragments: str) -> str:
    with pytest.raises(ConfigError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_tower_modules_and_ema_pairs_follow_the_declaration():
    m = Pair()
    m.check_towers()
    assert [t.path for t, _ in m.tower_modules("backbone")] == ["backbone", "target.backbone"]
    assert [t.path for t, _ in m.tower_modules(ema=False)] == ["backbone", "head"]
    pairs = m.ema_pairs()
    assert len(pairs) == 2
    assert pairs[0][0] is m.target.backbone and pairs[0][1] is m.backbone
    assert pairs[1][0] is m.target.head and pairs[1][1] is m.head


def test_ema_update_pairs_moves_every_declared_copy():
    m = Pair()
    with torch.no_grad():
        for p in m.target.parameters():
            p.normal_()
    online = {n: p.detach().double().clone() for n, p in m.named_parameters() if not n.startswith("target.")}
    before = {n: p.detach().double().clone() for n, p in m.target.named_parameters()}
    ema_update_pairs(m.ema_pairs(), 0.9)
    for name, p in m.target.named_parameters():
        expected = 0.9 * before[name] + 0.1 * online[name]  # BYOL eq. 1 in float64
        torch.testing.assert_close(p.detach().double(), expected, rtol=0, atol=1e-6)


def test_an_ema_pair_whose_shapes_differ_is_one_line():
    m = Pair(target_head=nn.Linear(5, 3))
    _one_line(m.check_towers, "'target.head' <- 'head'", "'weight'", "[3, 5] vs [3, 6]")


def test_bad_declarations_are_one_line_errors():
    m = Pair()
    m.towers = (*Pair.towers, Tower("missing", "head"))
    _one_line(m.check_towers, "'missing'", "no such submodule")
    m = Pair()
    m.towers = (Tower("backbone"), Tower("target.backbone", ema_of="head"))
    _one_line(m.check_towers, "'target.backbone' trails 'head'", "valid: ['backbone']")
    m = Pair()
    m.exported_backbone = "head"
    _one_line(m.check_towers, "exported_backbone='head'", "valid: ['backbone', 'target.backbone']")
    m = Pair()
    m.target.head.weight.requires_grad_(True)
    _one_line(m.check_towers, "'target.head' trains 'weight'", "no gradient")


# the references' EMA copies: (target, online) attribute paths
REFERENCE_PAIRS = {
    "byol": [("target_backbone", "backbone"), ("target_projector", "projector")],
    "mocov3": [("momentum_backbone", "backbone"), ("momentum_projector", "projector")],
    "dino": [("teacher.backbone", "backbone"), ("teacher.head", "head"), ("teacher.last_layer", "last_layer")],
}


@pytest.mark.parametrize(
    "name,preset", [("byol", "byol-cifar10"), ("mocov3", "mocov3-cifar10"), ("dino", "dino-cifar10-regnet")]
)
def test_builtin_ema_methods_declare_their_reference_pairs(name, preset):
    cfg = load_config(preset, ["model.backbone=resnet18", "model.channels_last=false"])
    with torch.device("meta"):
        method = METHODS[name].build(cfg, build_backbone(cfg.model), run_info(8))
    method.check_towers()
    pairs = [(id(t), id(o)) for t, o in method.ema_pairs()]
    expected = [(id(method.get_submodule(t)), id(method.get_submodule(o))) for t, o in REFERENCE_PAIRS[name]]
    assert pairs == expected
    # nothing trainable is left outside the declared towers (a head the declaration forgot)
    declared = [t.path + "." for t in method.towers]
    stray = [n for n, p in method.named_parameters() if not n.startswith(tuple(declared))]
    assert stray == []


def test_optimizer_groups_exclude_biases_and_norms_from_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.prototypes = nn.Linear(4, 2, bias=False)
    tagged = split_groups(model.named_parameters(), True, {"prototypes.": {"name": "prototypes"}})
    groups = {g["name"]: g for g in optimizer_groups(tagged, 0.05)}
    assert set(groups) == {"default", "default_no_wd", "prototypes"}
    assert groups["default"]["weight_decay"] == 0.05 and not groups["default"]["lars_exclude"]
    assert groups["default_no_wd"]["weight_decay"] == 0.0 and groups["default_no_wd"]["lars_exclude"]
    assert len(groups["default_no_wd"]["params"]) == 3  # linear bias, bn weight, bn bias
    assert groups["prototypes"]["params"][0] is model.prototypes.weight


def test_optimizer_groups_scale_weight_decay_and_keep_every_tag():
    w, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))
    tagged = split_groups(
        [("head.w", w), ("head.b", b)],
        False,
        {"head.": {"name": "head", "wd_scale": 0.5, "lr_scale": 2.0, "freeze_steps": 3}},
    )
    (group,) = optimizer_groups(tagged, 0.1)
    assert group["weight_decay"] == 0.1 * 0.5
    assert (group["lr_scale"], group["freeze_steps"], group["lars_exclude"], group["fixed_lr"]) == (
        2.0,
        3,
        False,
        False,
    )
    assert group["params"] == [w, b]
