"""``model.vit_style: mocov3``: MoCo v3's ViT (facebookresearch/moco-v3 ``vits.py`` ``VisionTransformerMoCo``)
built through timm's VisionTransformer, against the reference's formulas written out here."""

from __future__ import annotations

import math

import pytest
import torch

from openseer.config import load_config
from openseer.errors import ConfigError
from openseer.models.backbone import (
    backbone_spec,
    build_backbone,
    create_backbone_from_spec,
    sincos_2d_position_embedding,
)

SMALL = ["model.backbone=vit_tiny_patch16_224", "model.img_size=32", "model.patch_size=8"]


def reference_sincos(h: int, w: int, embed_dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """``build_2d_sincos_position_embedding`` of vits.py, in float64 with numpy-style loops for independence."""
    pos_dim = embed_dim // 4
    omega = [1.0 / temperature ** (k / pos_dim) for k in range(pos_dim)]
    rows = [[0.0] * embed_dim]  # the class token's
    for gw in range(w):  # torch.meshgrid(grid_w, grid_h) with "ij" indexing, flattened: w outer, h inner
        for gh in range(h):
            out_w = [gw * o for o in omega]
            out_h = [gh * o for o in omega]
            row = [math.sin(x) for x in out_w] + [math.cos(x) for x in out_w]
            rows.append(row + [math.sin(x) for x in out_h] + [math.cos(x) for x in out_h])
    return torch.tensor(rows, dtype=torch.float64)[None]


@pytest.mark.parametrize(("h", "w", "dim"), [(4, 4, 192), (2, 3, 8)])
def test_sincos_equals_vits_py(h, w, dim):
    ours = sincos_2d_position_embedding(h, w, dim)
    assert ours.shape == (1, 1 + h * w, dim)
    torch.testing.assert_close(ours.double(), reference_sincos(h, w, dim), rtol=0, atol=1e-6)


def test_sincos_needs_a_width_divisible_by_4():
    with pytest.raises(ConfigError, match="divisible by 4"):
        sincos_2d_position_embedding(2, 2, 6)


def test_the_mocov3_vit_has_the_reference_embedding_heads_and_init():
    torch.manual_seed(0)
    model = build_backbone(load_config("mocov3-vit-small", SMALL).model)
    assert all(block.attn.num_heads == 12 for block in model.blocks)  # timm's vit_tiny has 3
    torch.testing.assert_close(model.pos_embed.detach().double(), reference_sincos(4, 4, 192), rtol=0, atol=1e-6)
    assert not model.pos_embed.requires_grad
    # vits.py: xavier_uniform for every Linear, Q, K and V each as its own (d, d) matrix; zero biases
    qkv = model.blocks[0].attn.qkv.weight
    bound_qkv = math.sqrt(6.0 / (qkv.shape[0] // 3 + qkv.shape[1]))
    assert qkv.abs().max() <= bound_qkv and qkv.abs().max() > 0.95 * bound_qkv
    fc1 = model.blocks[0].mlp.fc1.weight
    bound_fc1 = math.sqrt(6.0 / sum(fc1.shape))
    assert fc1.abs().max() <= bound_fc1 and fc1.abs().max() > 0.95 * bound_fc1
    assert all(float(b.detach().abs().max()) == 0 for n, b in model.named_parameters() if n.endswith(".bias"))
    # cls token N(0, 1e-6); patch projection uniform with the Xavier bound of a 3 p^2 -> d linear map
    assert 0 < float(model.cls_token.abs().max()) < 1e-5
    proj = model.patch_embed.proj.weight
    bound_proj = math.sqrt(6.0 / (3 * 8 * 8 + 192))
    assert proj.abs().max() <= bound_proj and proj.abs().max() > 0.95 * bound_proj


def test_the_spec_rebuilds_the_same_architecture():
    """Exported weights name the style in their spec, so a rebuilt backbone takes them strictly."""
    cfg = load_config("mocov3-vit-small", SMALL).model
    spec = backbone_spec(cfg)
    assert spec["vit_style"] == "mocov3"
    rebuilt = create_backbone_from_spec(spec)
    rebuilt.load_state_dict(build_backbone(cfg).state_dict(), strict=True)
    assert rebuilt.blocks[0].attn.num_heads == 12


def test_timm_style_is_unchanged():
    cfg = load_config("mocov3-vit-small", [*SMALL, "model.vit_style=timm"]).model
    assert "vit_style" not in backbone_spec(cfg)
    model = build_backbone(cfg)
    assert model.blocks[0].attn.num_heads == 3 and model.pos_embed.requires_grad


def test_a_wrong_style_names_the_choices():
    with pytest.raises(ConfigError, match="mocov3"):
        load_config("mocov3-vit-small", ["model.vit_style=moco"])
