"""The method contract's parameter grouping (openseer/methods/base.py): tags -> optimizer group dicts."""

import torch
from torch import nn

from openseer.methods.base import optimizer_groups, split_groups


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
