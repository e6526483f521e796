import pytest
import torch
from torch import nn

from openseer.ops.lars import LARS


def test_lars_update_matches_hand_computation():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3))
    b = nn.Parameter(torch.randn(4))
    lr, wd, eta, mom = 0.5, 1e-2, 0.001, 0.9
    opt = LARS(
        [
            {"params": [w], "weight_decay": wd, "lars_exclude": False},
            {"params": [b], "weight_decay": 0.0, "lars_exclude": True},
        ],
        lr=lr,
        momentum=mom,
        trust_coefficient=eta,
    )
    w_ref, b_ref = w.detach().clone().double(), b.detach().clone().double()
    buf_w = buf_b = None
    for _ in range(3):
        gw, gb = torch.randn(4, 3), torch.randn(4)
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        # reference, float64, written out from the LARC formula
        g = gw.double()
        local = eta * w_ref.norm() / (g.norm() + wd * w_ref.norm())
        d = local * (g + wd * w_ref)
        buf_w = d if buf_w is None else mom * buf_w + d
        w_ref = w_ref - lr * buf_w
        buf_b = gb.double() if buf_b is None else mom * buf_b + gb.double()
        b_ref = b_ref - lr * buf_b
        torch.testing.assert_close(w.detach().double(), w_ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(b.detach().double(), b_ref, rtol=1e-5, atol=1e-7)


def test_zero_lr_moves_nothing_but_builds_momentum_and_no_grad_skips_both():
    """lr 0 (a warm-up's first step): momentum builds from the gradient, as torch SGD and the references' LARS;
    a parameter without a gradient (a frozen group, whose gradient the loop drops) keeps both."""
    p, q = nn.Parameter(torch.randn(5, 5)), nn.Parameter(torch.randn(5, 5))
    before_p, before_q = p.detach().clone(), q.detach().clone()
    opt = LARS([{"params": [p, q], "weight_decay": 0.1, "lars_exclude": False}], lr=0.0)
    p.grad = torch.randn(5, 5)
    opt.step()
    assert torch.equal(p.detach(), before_p) and torch.equal(q.detach(), before_q)
    assert "momentum_buffer" in opt.state[p] and "momentum_buffer" not in opt.state[q]


def test_zero_gradient_gets_no_weight_decay_as_apex_larc():
    """apex LARC adds wd * p only inside `if param_norm != 0 and grad_norm != 0`: a zero gradient moves nothing."""
    p = nn.Parameter(torch.randn(4, 3))
    q = nn.Parameter(torch.randn(4, 3))
    before = p.detach().clone()
    opt = LARS([{"params": [p, q], "weight_decay": 0.5, "lars_exclude": False}], lr=1.0, momentum=0.9)
    p.grad = torch.zeros(4, 3)
    q.grad = torch.randn(4, 3)
    q_expected = q.detach() - 1.0 * 0.001 * q.norm() / (q.grad.norm() + 0.5 * q.norm() + 1e-8) * (q.grad + 0.5 * q)
    opt.step()
    assert torch.equal(p.detach(), before)
    torch.testing.assert_close(q.detach(), q_expected.detach())


def _reference_lars_step(p, g, buf, lr, wd, eta, mom, exclude):
    """One step of the LARS in facebookresearch/barlowtwins main.py (identical in vicreg main_vicreg.py and
    moco-v3 optimizer.py), in float64: dp = g + wd p; q = eta ||p|| / ||dp|| (1 if a norm is 0);
    mu = momentum mu + q dp (mu starts at 0); p -= lr mu. An excluded parameter skips decay and adaptation."""
    dp = g if exclude else g + wd * p
    if not exclude:
        pn, dn = p.norm(), dp.norm()
        q = eta * pn / dn if (pn > 0 and dn > 0) else torch.ones((), dtype=p.dtype)
        dp = dp * q
    buf = mom * (torch.zeros_like(p) if buf is None else buf) + dp
    return p - lr * buf, buf


def test_lars_variant_matches_the_barlowtwins_formula_over_changing_lr():
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(6, 4))
    b = nn.Parameter(torch.randn(6))
    wd, eta, mom = 0.3, 0.02, 0.9  # wd large enough that |g + wd p| and |g| + wd |p| differ clearly
    opt = LARS(
        [
            {"params": [w], "weight_decay": wd, "lars_exclude": False},
            {"params": [b], "weight_decay": 0.0, "lars_exclude": True},
        ],
        momentum=mom,
        trust_coefficient=eta,
        variant="lars",
    )
    refs = {"w": [w.detach().double().clone(), None], "b": [b.detach().double().clone(), None]}
    for lr in (0.5, 0.8, 0.2):
        for group in opt.param_groups:
            group["lr"] = lr
        grads = {"w": torch.randn(6, 4), "b": torch.randn(6)}
        w.grad, b.grad = grads["w"].clone(), grads["b"].clone()
        opt.step()
        for name, exclude in (("w", False), ("b", True)):
            p, buf = refs[name]
            refs[name] = list(_reference_lars_step(p, grads[name].double(), buf, lr, wd, eta, mom, exclude))
        torch.testing.assert_close(w.detach().double(), refs["w"][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(b.detach().double(), refs["b"][0], rtol=1e-6, atol=1e-7)


def test_the_two_variants_differ_only_in_the_trust_ratio():
    """larc: eta |p| / (|g| + wd |p|); lars: eta |p| / |g + wd p|. Same direction g + wd p, different length."""
    torch.manual_seed(2)
    p0, g = torch.randn(5, 5), torch.randn(5, 5)
    wd, eta = 0.5, 0.01
    moved = {}
    for variant in ("larc", "lars"):
        p = nn.Parameter(p0.clone())
        opt = LARS([{"params": [p], "weight_decay": wd}], lr=1.0, trust_coefficient=eta, variant=variant)
        p.grad = g.clone()
        opt.step()
        moved[variant] = (p0 - p.detach()).double()
    d = (g + wd * p0).double()
    pn = p0.double().norm()
    torch.testing.assert_close(moved["larc"], eta * pn / (g.double().norm() + wd * pn + 1e-8) * d)
    torch.testing.assert_close(moved["lars"], eta * pn / d.norm() * d)
    assert not torch.allclose(moved["larc"], moved["lars"], rtol=1e-3)


def test_lars_variant_decays_a_zero_gradient_as_the_references():
    """Unlike apex LARC, the references add wd * p before testing the norm: a zero gradient still decays, by
    eta * ||p|| / ||wd p|| * wd p = eta * p."""
    p = nn.Parameter(torch.randn(4, 3))
    before = p.detach().clone()
    opt = LARS([{"params": [p], "weight_decay": 0.5}], lr=2.0, trust_coefficient=0.01, variant="lars")
    p.grad = torch.zeros(4, 3)
    opt.step()
    torch.testing.assert_close(p.detach(), before - 2.0 * 0.01 * before)


def test_unknown_variant_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="'larc', 'lars'|larc, lars"):
        LARS([nn.Parameter(torch.ones(2))], variant="lamb")
