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


def test_zero_lr_group_is_frozen_including_momentum():
    p = nn.Parameter(torch.randn(5, 5))
    before = p.detach().clone()
    opt = LARS([{"params": [p], "weight_decay": 0.1, "lars_exclude": False}], lr=0.0)
    p.grad = torch.randn(5, 5)
    opt.step()
    assert torch.equal(p.detach(), before)
    assert "momentum_buffer" not in opt.state[p]


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
