"""Every method's heads, built from its paper preset, against the reference implementation's module definitions.

The table below writes each reference's projector / predictor / prototypes layer by layer, from its source:
linear layers with their shapes and bias, batch norms with their affine parameters, activations. Each method is
built with its paper preset's own backbone and head sizes on the meta device (no memory, ~0.3 s each), so the
first layer's input width is the real backbone's.

One difference is allowed and named in the table: ``VOID`` marks a reference bias on a linear layer that a
train-mode batch norm follows directly. The batch norm subtracts the batch mean, so such a bias changes nothing
and its gradient is 0; openseer leaves it out (a bias there, or none, both pass).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from openseer.config import derive, load_config
from openseer.methods import METHODS
from openseer.methods.base import RunInfo
from openseer.models.backbone import build_backbone
from openseer.models.heads import Prototypes, WeightNormLinear

VOID = "void"  # a bias the next batch norm cancels
BOTH, SCALE, NONE = "weight+bias", "weight only", "no affine"


def L(d_in: int, d_out: int, bias: bool | str) -> tuple:  # noqa: N802 (the table reads like the references)
    return ("Linear", d_in, d_out, bias)


def BN(dim: int, affine: str = BOTH) -> tuple:  # noqa: N802
    return ("BatchNorm1d", dim, affine)


def P(dim: int, k: int) -> tuple:  # noqa: N802
    return ("Prototypes", dim, k)


RELU, GELU = ("ReLU",), ("GELU",)

REFERENCES: dict[str, dict[str, list[tuple]]] = {
    # facebookresearch/swav src/resnet50.py: projection_head = Linear(2048, hidden_mlp) (bias), BatchNorm1d, ReLU,
    # Linear(hidden_mlp, output_dim) (bias); prototypes = Linear(output_dim, nmb_prototypes, bias=False)
    "swav-resnet50": {
        "head.mlp": [L(2048, 2048, VOID), BN(2048), RELU, L(2048, 128, True)],
        "prototypes": [P(128, 3000)],
    },
    # facebookresearch/swav main_deepclusterv2.py: the same resnet50 head, MultiPrototypes of 3 x 3000
    "deepclusterv2": {
        "head.mlp": [L(2048, 2048, VOID), BN(2048), RELU, L(2048, 128, True)],
        "prototypes": [P(128, 3000)] * 3,
    },
    # google-research/simclr tf2/model.py ProjectionHead (v2, 3 layers): LinearLayer(use_bias=True, use_bn=True)
    # = dense without bias + BN with centre and scale, ReLU; last LinearLayer(use_bias=False, use_bn=True) =
    # dense without bias + BN with scale and no centre
    "simclr-imagenet": {
        "projector": [
            *[L(2048, 2048, False), BN(2048), RELU] * 2,
            L(2048, 128, False),
            BN(128, SCALE),
        ],
    },
    # facebookresearch/moco-v3 moco/builder.py MoCo_ResNet: _build_mlp(2, 2048, 4096, 256) (Linear bias=False,
    # BN, ReLU; last BN affine=False); predictor _build_mlp(2, 256, 4096, 256, last_bn=False)
    "mocov3-resnet50": {
        "projector": [L(2048, 4096, False), BN(4096), RELU, L(4096, 256, False), BN(256, NONE)],
        "predictor": [L(256, 4096, False), BN(4096), RELU, L(4096, 256, False)],
    },
    # moco/builder.py MoCo_ViT: _build_mlp(3, 384, 4096, 256) projector; predictor _build_mlp(2, 256, 4096, 256)
    # with its last BN (affine=False)
    "mocov3-vit-small": {
        "projector": [
            L(384, 4096, False),
            BN(4096),
            RELU,
            L(4096, 4096, False),
            BN(4096),
            RELU,
            L(4096, 256, False),
            BN(256, NONE),
        ],
        "predictor": [L(256, 4096, False), BN(4096), RELU, L(4096, 256, False), BN(256, NONE)],
    },
    # deepmind-research byol/utils/networks.py MLP: hk.Linear(hidden, with_bias=True), BatchNorm, relu,
    # hk.Linear(output, with_bias=False); projector 2048 -> 4096 -> 256, predictor 256 -> 4096 -> 256
    "byol-imagenet": {
        "projector": [L(2048, 4096, VOID), BN(4096), RELU, L(4096, 256, False)],
        "predictor": [L(256, 4096, VOID), BN(4096), RELU, L(4096, 256, False)],
    },
    # facebookresearch/simsiam simsiam/builder.py: encoder.fc = Linear(2048, 2048, bias=False), BN, ReLU,
    # Linear(2048, 2048, bias=False), BN, ReLU, fc (its bias frozen: "not use bias as it is followed by BN"),
    # BatchNorm1d(dim, affine=False); predictor Linear(2048, 512, bias=False), BN, ReLU, Linear(512, 2048)
    "simsiam-imagenet": {
        "projector": [
            *[L(2048, 2048, False), BN(2048), RELU] * 2,
            L(2048, 2048, VOID),
            BN(2048, NONE),
        ],
        "predictor": [L(2048, 512, False), BN(512), RELU, L(512, 2048, True)],
    },
    # facebookresearch/barlowtwins main.py: Linear(bias=False), BN, ReLU per hidden layer, Linear(bias=False);
    # 2048-8192-8192-8192 (its BatchNorm1d(8192, affine=False) on z normalises in the loss, no parameters)
    "barlowtwins": {
        "projector": [*[L(2048, 8192, False), BN(8192), RELU], L(8192, 8192, False), BN(8192), RELU]
        + [L(8192, 8192, False)],
    },
    # facebookresearch/vicreg main_vicreg.py Projector: Linear (bias), BN, ReLU per hidden layer,
    # Linear(bias=False); 2048-8192-8192-8192
    "vicreg": {
        "projector": [L(2048, 8192, True), BN(8192), RELU, L(8192, 8192, True), BN(8192), RELU]
        + [L(8192, 8192, False)],
    },
    # facebookresearch/dino vision_transformer.py DINOHead(384, 65536, use_bn=False, norm_last_layer=True,
    # nlayers=3, hidden_dim=2048, bottleneck_dim=256): Linear, GELU, Linear, GELU, Linear (biases); then
    # weight_norm(Linear(256, 65536, bias=False)) with weight_g filled with 1 and frozen
    "dino-vit-small": {
        "head.mlp": [L(384, 2048, True), GELU, L(2048, 2048, True), GELU, L(2048, 256, True)],
        "last_layer": [("WeightNormLinear", 256, 65536, "norm fixed to 1")],
    },
}


def describe(module: nn.Module) -> tuple | None:
    """One layer as the table writes it (None for modules that are not layers, e.g. containers)."""
    if isinstance(module, nn.Linear):
        return L(module.in_features, module.out_features, module.bias is not None and module.bias.requires_grad)
    if isinstance(module, nn.BatchNorm1d):
        if not module.affine:
            return BN(module.num_features, NONE)
        return BN(module.num_features, BOTH if module.bias.requires_grad else SCALE)
    if isinstance(module, nn.ReLU):
        return RELU
    if isinstance(module, nn.GELU):
        return GELU
    if isinstance(module, Prototypes):
        return P(module.weight.shape[1], module.weight.shape[0])
    if isinstance(module, WeightNormLinear):
        out_dim, in_dim = module.weight.shape
        return ("WeightNormLinear", in_dim, out_dim, "norm fixed to 1" if module.norm is None else "norm learnt")
    return None


def layers(module: nn.Module) -> list[tuple]:
    found = [describe(m) for m in module.modules()]
    return [layer for layer in found if layer is not None]


def matches(ours: tuple, ref: tuple) -> bool:
    if ref[0] == "Linear" and ref[3] == VOID:
        return ours[:3] == ref[:3]
    return ours == ref


def build_on_meta(preset: str) -> nn.Module:
    cfg = load_config(preset)
    derived = derive(cfg, dataset_size=cfg.train.batch_size * 1000)  # DeepCluster-v2 needs images >= clusters
    with torch.device("meta"):
        return METHODS[cfg.method].build(cfg, build_backbone(cfg.model), RunInfo.of(cfg, derived))


def test_every_method_has_a_row():
    methods = {load_config(preset).method for preset in REFERENCES}
    assert methods == set(METHODS), f"methods without a reference row: {set(METHODS) - methods}"


@pytest.mark.parametrize("preset", sorted(REFERENCES))
def test_heads_equal_the_reference_modules(preset):
    method = build_on_meta(preset)
    modules = dict(method.named_modules())
    for name, ref in REFERENCES[preset].items():
        ours = layers(modules[name])
        assert len(ours) == len(ref), f"{preset} {name}: {len(ours)} layers, the reference has {len(ref)}: {ours}"
        for i, (o, r) in enumerate(zip(ours, ref, strict=True)):
            assert matches(o, r), f"{preset} {name} layer {i}: {o}, the reference has {r}"


def test_the_table_sees_a_bias_and_a_missing_batch_norm():
    """The comparison is sharp: an output bias (BYOL before it matched) and a missing BN fail."""
    assert not matches(L(4096, 256, True), L(4096, 256, False))
    assert not matches(BN(256, BOTH), BN(256, NONE))
    assert matches(L(2048, 4096, False), L(2048, 4096, VOID)) and matches(L(2048, 4096, True), L(2048, 4096, VOID))
    assert describe(nn.Linear(3, 4, bias=False)) == L(3, 4, False)
    bn = nn.BatchNorm1d(5)
    bn.bias.requires_grad_(False)
    assert describe(bn) == BN(5, SCALE)


def test_mocov3_vit_is_the_reference_vit_small():
    """moco-v3 vits.py vit_small: patch 16, width 384, depth 12, 12 heads, qkv bias, LayerNorm eps 1e-6, a fixed
    position embedding; with --stop-grad-conv1 the patch projection takes no gradient either."""
    backbone = build_on_meta("mocov3-vit-small").backbone
    assert backbone.patch_embed.patch_size == (16, 16) and backbone.embed_dim == 384
    assert len(backbone.blocks) == 12
    for block in backbone.blocks:
        assert block.attn.num_heads == 12 and block.attn.qkv.bias is not None
        assert block.norm1.eps == 1e-6 and block.mlp.fc1.out_features == 4 * 384
    assert not backbone.pos_embed.requires_grad
    assert not any(p.requires_grad for p in backbone.patch_embed.parameters())
