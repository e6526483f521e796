"""Every preset builds and trains a step in its own precision mode without non-finite values."""

import pytest
import torch

from openseer.config import list_presets, load_config
from openseer.methods import METHODS
from openseer.models.backbone import build_backbone, count_parameters
from openseer.train import build_optimizer
from tests.helpers import run_info, step_ctx

MAX_PARAMS = 30_000_000  # larger backbones are swapped for a small RegNet: crops and precision still apply


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_preset_step_is_finite_in_its_precision(name):
    small = ["deepclusterv2.num_prototypes=[2,2]"]  # k-means needs no more clusters than the 4 images
    cfg = load_config(name, ["train.batch_size=4", "swav.queue_length=0", *small])
    with torch.device("meta"):
        big = count_parameters(build_backbone(cfg.model)) > MAX_PARAMS
    if big:
        cfg = load_config(name, ["train.batch_size=4", "swav.queue_length=0", "model.backbone=regnety_002",
                                 "model.regnet_depth=0", "swav.hidden_dims=[64]", "swav.num_prototypes=100", *small])
    torch.manual_seed(0)
    model = METHODS[cfg.method].build(cfg, build_backbone(cfg.model), run_info(4))
    fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt, _ = build_optimizer(cfg, model)
    for g in opt.param_groups:
        g["lr"] = 0.1
    a = cfg.aug
    sizes = [a.global_size] * a.global_crops + [a.local_size] * a.local_crops
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)
    for _ in range(2):
        crops = [torch.randn(4, 3, s, s).contiguous(memory_format=fmt) for s in sizes]
        model.before_step(step_ctx())
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            extra = {"indices": torch.arange(4)} if model.needs_indices else {}
            loss = model(crops, step_ctx(), **extra).loss
        loss.backward()
        assert torch.isfinite(loss), name
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, f"{name}: non-finite gradients in {bad[:3]}"
        opt.step()
        opt.zero_grad()


def test_bf16_guard_prevents_nan_in_strided_grouped_conv_on_1x1():
    """Measured bug: bf16 autocast gives NaN weight grads for a stride-2 grouped conv on 1x1 input (CPU)."""
    from openseer.models.backbone import guard_cpu_bf16_convs

    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(368, 368, 3, stride=2, padding=1, groups=46, bias=False))
    x = torch.randn(32, 368, 1, 1)
    ref = conv[0].weight.detach().double()
    assert guard_cpu_bf16_convs(conv) == 1
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.float().pow(2).mean().backward()
        assert torch.isfinite(conv[0].weight.grad).all()
        # and it equals the float64 gradient: only the centre tap sees the 1x1 input
        xd = x.double()
        w = ref.clone().requires_grad_()
        torch.nn.functional.conv2d(xd, w, stride=2, padding=1, groups=46).pow(2).mean().backward()
        torch.testing.assert_close(conv[0].weight.grad.double(), w.grad, rtol=1e-4, atol=1e-6)
        conv[0].weight.grad = None
