"""SimSiam: negative cosine with stop-gradient against its formula, no gradient through the target branch,
and batch norm synchronised across 2 processes."""

import math

import pytest
import torch
import torch.nn.functional as F

from openseer.config import ConfigError, derive, load_config
from openseer.methods.base import StepContext
from openseer.methods.registry import get_method
from openseer.methods.simsiam import negative_cosine, validate
from openseer.train import apply_schedules, build_trainer
from tests.methods.two_views import (
    TinyBackbone,
    assert_two_processes_differ,
    assert_two_processes_equal_one,
    build,
    crops,
    full_config,
    run_info,
)


def test_negative_cosine_matches_formula():
    g = torch.Generator().manual_seed(4)
    p, z = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    pd, zd = p.double(), z.double()
    expected = -((pd / pd.norm(dim=1, keepdim=True)) * (zd / zd.norm(dim=1, keepdim=True))).sum(1).mean()
    assert float(negative_cosine(p, z)) == pytest.approx(float(expected), rel=1e-6)


def test_stop_gradient_blocks_the_target_branch():
    z = torch.randn(4, 6, requires_grad=True)
    p = torch.randn(4, 6, requires_grad=True)
    negative_cosine(p, z).backward()
    assert z.grad is None and p.grad is not None


def test_method_gradient_flows_only_through_the_predictor_branch():
    """d loss / d z2 must be exactly the part through p2 = h(z2): compare with the gradient computed by
    hand through the predictor only."""
    method = build("simsiam", local_batch=4)
    x = [c[:4] for c in crops(0)]
    z = [method.projector(method.backbone(v)) for v in x]
    p = [method.predictor(zi) for zi in z]
    loss = 0.5 * negative_cosine(p[0], z[1]) + 0.5 * negative_cosine(p[1], z[0])
    (grad_z1,) = torch.autograd.grad(loss, z[1], retain_graph=True)
    (grad_via_predictor,) = torch.autograd.grad(
        -0.5 * F.cosine_similarity(p[1], z[0].detach(), dim=1).mean(), z[1], retain_graph=True
    )
    torch.testing.assert_close(grad_z1, grad_via_predictor)
    (grad_without_stop,) = torch.autograd.grad(  # the same loss without stop-gradient: a different gradient
        -0.5 * F.cosine_similarity(p[0], z[1], dim=1).mean() - 0.5 * F.cosine_similarity(p[1], z[0], dim=1).mean(),
        z[1],
    )
    assert not torch.allclose(grad_without_stop, grad_via_predictor, atol=1e-4)
    out = method(x, StepContext(0, 0, run_info(4)))
    assert float(out.loss) == pytest.approx(float(loss), rel=1e-5)
    assert -1.0 <= float(out.loss) <= 1.0 and "z_std" in out.scalars and method.exact_accumulation


def test_projector_layout_follows_the_reference():
    method = build("simsiam", local_batch=4, projector_layers=3)
    linears = [m for m in method.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 8)]
    assert not method.projector[-1].affine  # output BN without affine parameters


def test_validate_names_the_fix():
    with pytest.raises(ConfigError, match="aug.local_crops=0"):
        validate(full_config("simsiam", local_crops=4))


@pytest.mark.dist
def test_two_processes_with_synchronised_batch_norm_equal_one_process():
    assert_two_processes_equal_one("simsiam")


@pytest.mark.dist
def test_with_per_process_batch_norm_two_processes_differ():
    assert_two_processes_differ("simsiam", "per-process-bn")


def _reference_lrs(init_lr: float, step: int, total: int) -> tuple[float, float]:
    """main_simsiam.py ``adjust_learning_rate`` (per step instead of per epoch): (fix_lr groups, the rest)."""
    cur_lr = init_lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    return init_lr, cur_lr


@pytest.mark.parametrize("fixed", [True, False])
def test_fix_pred_lr_keeps_the_predictor_at_the_initial_lr(fixed):
    cfg = load_config(
        "simsiam-cifar10",
        [f"simsiam.fix_pred_lr={str(fixed).lower()}", "train.batch_size=4", "optim.warmup_epochs=0",
         "optim.final_lr_ratio=0", "train.precision=fp32", "model.channels_last=false"],
    )  # fmt: skip
    derived = derive(cfg, 40, 1)  # 10 steps per epoch
    method = get_method("simsiam").build(cfg, TinyBackbone(), run_info(4, total_steps=derived.total_steps))
    trainer = build_trainer(cfg, method, derived, torch.device("cpu"))
    predictor = {id(p) for p in method.predictor.parameters()}
    for step in (0, 1, derived.total_steps // 2, derived.total_steps - 1):
        apply_schedules(trainer, step)
        fix_lr, cur_lr = _reference_lrs(derived.peak_lr, step, derived.total_steps)
        for group in trainer.optimizer.param_groups:
            in_predictor = {id(p) in predictor for p in group["params"]}
            assert len(in_predictor) == 1 or not fixed  # fixed: the predictor never shares a group
            expected = fix_lr if fixed and True in in_predictor else cur_lr
            assert group["lr"] == pytest.approx(expected, rel=1e-12), (step, group["name"])
