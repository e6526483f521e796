"""The MLP head builder reproduces each reference's layer layout."""

import pytest
import torch
from torch import nn

from openseer.models.heads import MLP


def _layout(m: nn.Module) -> list[str]:
    out = []
    for layer in m:
        if isinstance(layer, nn.Linear):
            out.append(f"Linear({layer.in_features},{layer.out_features},bias={layer.bias is not None})")
        elif isinstance(layer, nn.BatchNorm1d):
            out.append(f"BN(affine={layer.affine})")
        else:
            out.append(type(layer).__name__)
    return out


def test_byol_projector_layout():
    assert _layout(MLP([8, 16, 4])) == ["Linear(8,16,bias=False)", "BN(affine=True)", "ReLU", "Linear(16,4,bias=True)"]


def test_moco_v3_projector_and_predictor_layout():
    assert _layout(MLP([8, 16, 16, 4], last_bn="plain")) == [
        "Linear(8,16,bias=False)",
        "BN(affine=True)",
        "ReLU",
        "Linear(16,16,bias=False)",
        "BN(affine=True)",
        "ReLU",
        "Linear(16,4,bias=False)",
        "BN(affine=False)",
    ]
    assert _layout(MLP([4, 16, 4], last_bias=False))[-1] == "Linear(16,4,bias=False)"


def test_simclr_scale_only_output_bn_keeps_shift_at_zero():
    head = MLP([8, 8, 4], last_bn="scale")
    bn = head[-1]
    assert bn.affine and bn.weight.requires_grad and not bn.bias.requires_grad
    head(torch.randn(6, 8)).sum().backward()
    assert bn.bias.grad is None and torch.all(bn.bias == 0)


def test_without_batch_norm_and_bad_dims():
    assert _layout(MLP([8, 16, 4], batch_norm=False)) == ["Linear(8,16,bias=True)", "ReLU", "Linear(16,4,bias=True)"]
    with pytest.raises(ValueError):
        MLP([8])
    with pytest.raises(ValueError):
        MLP([8, 4], batch_norm=False, last_bn="plain")
