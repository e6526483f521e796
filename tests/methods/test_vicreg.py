import numpy as np
import pytest
import torch

from openseer.config import ConfigError
from openseer.methods import vicreg
from openseer.methods.vicreg import Config, VICReg, vicreg_terms
from tests.dist.common import spawn
from tests.methods.equivalence import TinyBackbone, assert_same_run, context, differs, global_batches, sgd_steps


def numpy_terms(x: np.ndarray, y: np.ndarray, eps: float = 1e-4) -> dict[str, float]:
    """Paper eq. 1-5 in float64 with explicit sums."""
    n, d = x.shape
    invariance = ((x - y) ** 2).sum() / (n * d)

    def variance(z):
        var = [((z[:, j] - z[:, j].mean()) ** 2).sum() / (n - 1) for j in range(d)]
        return np.mean([max(0.0, 1 - np.sqrt(v + eps)) for v in var])

    def covariance(z):
        zc = z - z.mean(axis=0)
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    total += (sum(zc[k, i] * zc[k, j] for k in range(n)) / (n - 1)) ** 2
        return total / d

    return {
        "invariance": invariance,
        "variance": variance(x) / 2 + variance(y) / 2,
        "covariance": covariance(x) + covariance(y),
    }


def test_three_terms_match_float64_formulas():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 6, generator=g) * torch.tensor([0.2, 0.5, 1.0, 2.0, 0.1, 3.0])  # some dims below std 1
    y = x + 0.3 * torch.randn(12, 6, generator=g)
    got = vicreg_terms(x, y, 1e-4)
    want = numpy_terms(x.double().numpy(), y.double().numpy())
    for k in want:
        assert float(got[k]) == pytest.approx(want[k], rel=1e-5), k
    assert want["variance"] > 0 and want["covariance"] > 0


def test_loss_weights_and_collapse_value():
    model = VICReg(TinyBackbone(), Config(projector_dims=[16, 8]))
    out = model([torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)], context(local_batch=6))
    out.loss.backward()
    s = out.scalars
    expected = 25 * s["invariance"] + 25 * s["variance"] + s["covariance"]
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert model.backbone.conv.weight.grad.abs().sum() > 0
    collapsed = vicreg_terms(torch.ones(5, 8), torch.ones(5, 8), 1e-4)
    assert 25 * float(collapsed["variance"]) == pytest.approx(model.trivial_loss())
    assert float(collapsed["invariance"]) == 0 and float(collapsed["covariance"]) == 0


def test_a_global_batch_of_one_is_a_config_error():
    cfg = type("C", (), {"vicreg": Config()})()
    with pytest.raises(ConfigError, match="raise train.batch_size"):
        vicreg.build(cfg, TinyBackbone(), context(local_batch=1).info)


def _make():
    return VICReg(TinyBackbone(), Config(projector_dims=[12, 8]))


def _runs(rank: int, world: int, batches) -> dict:
    right = sgd_steps(_make, batches)
    vicreg.all_gather_with_grad = lambda t: t  # per-process variance and covariance, as without the gather
    broken = sgd_steps(_make, batches)
    return {"right": right, "broken": broken}


@pytest.mark.dist
def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    batches = global_batches(steps=3, batch=8)
    single = sgd_steps(_make, batches)
    two = spawn(_runs, 2, tmp_path, batches)
    for rank in range(2):
        assert_same_run(two[rank]["right"], single)
        assert differs(two[rank]["broken"], single)
