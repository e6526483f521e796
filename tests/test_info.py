"""SEER presets: full-size parameter counts on the meta device, shrunken builds, `openseer info`."""

from __future__ import annotations

import pytest
import torch

from openseer.cli import main
from openseer.config import list_presets, load_config
from openseer.info import count_config_parameters, model_info
from openseer.methods import METHODS
from openseer.models.backbone import build_backbone
from tests.dist.test_data_parallel import TINY_REGNET
from tests.helpers import run_info, step_ctx

SEER = ["seer-32gf", "seer-64gf", "seer-128gf", "seer-256gf", "seer-10b"]

# timm's published parameter counts of these RegNetYs with their 1000-class classifier (pycls / SEER sizes)
TIMM_WITH_FC = {"seer-32gf": 145.05e6, "seer-64gf": 281.38e6, "seer-128gf": 644.81e6, "seer-256gf": 1282.60e6}


@pytest.mark.parametrize("preset", list(TIMM_WITH_FC))
def test_full_size_parameter_counts_on_meta(preset):
    cfg = load_config(preset)
    n = count_config_parameters(cfg)
    with torch.device("meta"):
        width = build_backbone(cfg.model).num_features
    assert n + width * 1000 + 1000 == pytest.approx(TIMM_WITH_FC[preset], abs=0.005e6)


def test_seer_256gf_and_10b_match_the_papers():
    from timm.models.regnet import model_cfgs

    c = model_cfgs["regnety_2560"]  # SEER's RegNetY-256GF design (Goyal et al. 2021)
    assert (c.depth, c.w0, c.wa, c.wm, c.group_size, c.se_ratio) == (27, 640, 230.83, 2.53, 373, 0.25)
    cfg = load_config("seer-256gf")
    info = model_info(cfg, world_size=512)
    assert info.params_backbone == pytest.approx(1.3e9, rel=0.03)  # "1.3B parameters"
    assert info.flops_by_crop[224] / 2 == pytest.approx(256e9, rel=0.02)  # 256 GF = multiply-adds at 224 px
    # head 10444-8192-8192-256 without BN, 16k prototypes
    head = [m for m in cfg.swav.hidden_dims] + [cfg.swav.output_dim]
    assert head == [8192, 8192, 256] and not cfg.swav.head_batch_norm and cfg.swav.num_prototypes == 16000
    expected_head = 10444 * 8192 + 8192 + 8192 * 8192 + 8192 + 8192 * 256 + 256 + 16000 * 256
    assert info.params_head == expected_head

    ten = model_info(load_config("seer-10b"), world_size=496)
    assert 9.0e9 < ten.params_backbone < 10.0e9 and 9.5e9 < ten.params_total < 10.5e9  # "10B"
    # FSDP over 496 processes: fp32 parameters + gradients + momentum per process ~ 12 bytes x 9.6B / 496
    per_process = ten.memory["parameters"] + ten.memory["gradients"] + ten.memory["optimizer"]
    assert per_process == pytest.approx(12 * ten.params_total / 496)


def test_presets_have_a_description_and_the_seer_recipe():
    presets = list_presets()
    for name in SEER:
        assert presets[name], name
        cfg = load_config(name)
        s, o, a = cfg.swav, cfg.optim, cfg.aug
        assert (s.sinkhorn_iterations, s.num_prototypes, o.name, o.weight_decay) == (10, 16000, "lars", 1e-5)
        assert o.base_lr * 8192 / 256 == pytest.approx(9.6)
        assert (a.global_crops, a.local_crops, a.local_size) == (2, 4, 96)
        assert a.global_size == (160 if name == "seer-10b" else 224)
        assert s.epsilon == (0.03 if name == "seer-10b" else 0.05)
        # SEER 2021: groups of 64 (checkpoint name ..._syncBN64); 10B: VISSL's command inherits GROUP_SIZE 8
        assert cfg.parallel.sync_batchnorm and cfg.parallel.batchnorm_group_size == (8 if name == "seer-10b" else 64)


@pytest.mark.parametrize("preset", ["seer-256gf", "seer-10b"])  # shrunk, the others differ only in width
def test_shrunken_presets_build_and_train_a_step(preset):
    cfg = load_config(
        preset,
        [
            *TINY_REGNET,
            "swav.hidden_dims=[32, 32]",
            "swav.output_dim=16",
            "swav.num_prototypes=20",
            "aug.global_size=32",
            "aug.local_size=16",
            "model.channels_last=false",
        ],
    )
    torch.manual_seed(0)
    method = METHODS["swav"].build(cfg, build_backbone(cfg.model), run_info(4))
    crops = [torch.randn(4, 3, 32, 32)] * 2 + [torch.randn(4, 3, 16, 16)] * 4
    loss = method(crops, step_ctx()).loss
    loss.backward()
    assert torch.isfinite(loss) and method.prototypes.weight.grad is not None


def test_info_command_and_fsdp_scaling(capsys):
    assert main(["info", "seer-32gf", "--world-size", "512", "--checkpointing", "--fsdp"]) == 0
    out = capsys.readouterr().out
    assert "141.3M" in out and "GFLOPs" in out and "activations" in out
    cfg = load_config("seer-32gf", ["parallel.strategy=fsdp"])
    one, eight = model_info(cfg, 1), model_info(cfg, 8)
    assert one.memory["optimizer"] / eight.memory["optimizer"] == pytest.approx(8)
    no_ckpt = model_info(load_config("seer-32gf", ["parallel.activation_checkpointing=false"]), 8)
    ckpt = model_info(load_config("seer-32gf", ["parallel.activation_checkpointing=true"]), 8)
    assert ckpt.memory["activations"] < 0.5 * no_ckpt.memory["activations"]


# the references' EMA copies: BYOL's target network, MoCo v3's momentum encoder, DINO's teacher
EMA_PREFIXES = {
    "byol-imagenet": ("target_backbone.", "target_projector."),
    "mocov3-resnet50": ("momentum_backbone.", "momentum_projector."),
    "dino-vit-small": ("teacher.",),
}


@pytest.mark.parametrize("preset", list(EMA_PREFIXES))
def test_info_counts_the_ema_towers(preset):
    """The EMA copies' parameters and the forward FLOPs of their backbone on the global crops."""
    cfg = load_config(preset)
    info = model_info(cfg)
    with torch.device("meta"):
        method = METHODS[cfg.method].build(cfg, build_backbone(cfg.model), run_info(4096))
    ema = sum(p.numel() for n, p in method.named_parameters() if n.startswith(EMA_PREFIXES[preset]))
    assert info.params_ema == ema > info.params_backbone  # a whole backbone copy and more
    # the target backbone runs on every global crop
    global_flops = info.flops_by_crop[cfg.aug.global_size] * cfg.aug.global_crops
    assert info.teacher_flops_per_image == pytest.approx(global_flops)
