"""all_gather_with_grad: identity in one process; across 2 processes each input gets the summed gradient."""

import pytest
import torch

from openseer.ops.gather import all_gather_with_grad
from tests.methods.two_views import two_process_results


def test_identity_in_one_process_keeps_the_graph():
    t = torch.randn(3, 2, requires_grad=True)
    out = all_gather_with_grad(t)
    assert out is t
    (out * 2).sum().backward()
    torch.testing.assert_close(t.grad, torch.full((3, 2), 2.0))


@pytest.mark.dist
def test_two_processes_gather_in_rank_order_and_sum_gradients_into_each_slice():
    # rank r holds rows filled with r + 1 and weights the gathered (4, 3) tensor by (r + 1) * arange(12)
    results = [r["gather"] for r in two_process_results()]
    expected_rows = torch.tensor([1.0, 1.0, 2.0, 2.0]).unsqueeze(1).expand(4, 3)
    base = torch.arange(12.0).reshape(4, 3)
    for rank, r in enumerate(results):
        torch.testing.assert_close(r["gathered"], expected_rows)
        # d/dt_rank of sum_s (s + 1) * <base, gathered> = (1 + 2) * base[rows of rank]
        torch.testing.assert_close(r["grad"], 3 * base[2 * rank : 2 * rank + 2])


def _reduce_gradients(rank: int, world: int) -> dict:
    """Each rank weights the summed tensor by (rank + 1); returns its input's gradient under both semantics."""
    from openseer.ops.gather import all_reduce_sum

    out = {}
    for grad in ("sum", "local"):
        t = torch.full((2,), float(rank + 1), requires_grad=True)
        total = all_reduce_sum(t, grad=grad)
        (total * (rank + 1)).sum().backward()
        out[grad] = (total.detach(), t.grad)
    return out


def test_all_reduce_sum_is_identity_in_one_process_and_checks_its_semantics():
    from openseer.ops.gather import all_reduce_sum

    t = torch.randn(3, requires_grad=True)
    assert all_reduce_sum(t, grad="local") is t
    with pytest.raises(ValueError, match="'sum' or 'local'"):
        all_reduce_sum(t, grad="mean")


@pytest.mark.dist
def test_all_reduce_sum_gradient_semantics_on_two_processes(tmp_path):
    from tests.dist.common import spawn

    for rank, r in enumerate(spawn(_reduce_gradients, 2, tmp_path)):
        for grad in ("sum", "local"):
            torch.testing.assert_close(r[grad][0], torch.full((2,), 3.0))  # 1 + 2
        # "sum": d/dt_rank of sum_s (s + 1) * total = 1 + 2; "local": only this rank's own weight
        torch.testing.assert_close(r["sum"][1], torch.full((2,), 3.0))
        torch.testing.assert_close(r["local"][1], torch.full((2,), float(rank + 1)))
