"""The method's output embedding and probe signals of the health checks (``Method.head_embed``,
``Method.probe_signals``): every registered method, built from its CIFAR preset at a tiny size, embeds images in
eval mode into its output dimension, equal to a recomputation from its declared towers; SwAV's and
DeepCluster-v2's probe signals against references written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from openseer.config import load_config
from openseer.methods import METHODS
from openseer.methods.base import Method
from openseer.models.backbone import build_backbone
from tests.helpers import run_info

COMMON = ["model.backbone=regnetx_002", "aug.local_crops=0", "aug.global_size=16", "train.batch_size=6"]
# method -> (CIFAR preset, tiny overrides, output dimension the loss compares in)
TINY = {
    "swav": ("cifar10", ["swav.hidden_dims=[32]", "swav.output_dim=16", "swav.num_prototypes=10"], 16),
    "byol": ("byol-cifar10", ["byol.hidden_dim=32", "byol.output_dim=12"], 12),
    "simsiam": (
        "simsiam-cifar10",
        ["simsiam.hidden_dim=32", "simsiam.output_dim=14", "simsiam.predictor_hidden_dim=8"],
        14,
    ),
    "mocov3": ("mocov3-cifar10", ["mocov3.hidden_dim=32", "mocov3.output_dim=10"], 10),
    "simclr": ("simclr-cifar10", ["simclr.hidden_dim=32", "simclr.output_dim=9"], 9),
    "vicreg": ("vicreg-cifar10", ["vicreg.projector_dims=[32,24]"], 24),
    "barlowtwins": ("barlowtwins-cifar10", ["barlowtwins.projector_dims=[32,20]"], 20),
    "dino": ("dino-cifar10-regnet", ["dino.hidden_dim=32", "dino.bottleneck_dim=8", "dino.out_dim=20"], 8),
    "deepclusterv2": (
        "deepclusterv2-cifar10",
        ["deepclusterv2.hidden_dims=[32]", "deepclusterv2.output_dim=16", "deepclusterv2.num_prototypes=[4,5]"],
        16,
    ),
}


def _unit_mlp(tower, x):
    """SwAV's, DeepCluster-v2's and DINO's heads: the MLP, then onto the unit sphere."""
    return F.normalize(tower.mlp(x), dim=1)


# the output embedding recomputed from the declared towers (path -> module); never the method's own code path
RECOMPUTE = {
    "swav": lambda t, x: _unit_mlp(t["head"], t["backbone"](x)),
    "deepclusterv2": lambda t, x: _unit_mlp(t["head"], t["backbone"](x)),
    "dino": lambda t, x: _unit_mlp(t["teacher.head"], t["teacher.backbone"](x)),  # the exported teacher
    **{m: (lambda t, x: t["projector"](t["backbone"](x))) for m in ("byol", "simsiam", "mocov3", "simclr")},
    **{m: (lambda t, x: t["projector"](t["backbone"](x))) for m in ("vicreg", "barlowtwins")},
}


def _build(name: str):
    preset, extra, dim = TINY[name]
    cfg = load_config(preset, [*COMMON, *extra])
    assert cfg.method == name
    torch.manual_seed(0)
    return METHODS[name].build(cfg, build_backbone(cfg.model), run_info(6)), dim


def test_every_registered_method_is_covered():
    assert sorted(TINY) == sorted(METHODS) == sorted(RECOMPUTE)


@pytest.mark.parametrize("name", sorted(TINY))
def test_head_embed_is_the_output_tower_in_eval_mode(name, one_thread):
    method, dim = _build(name)
    # EMA copies that differ from their online towers: the output embedding comes from the side the method
    # exports (the online towers; DINO's teacher), not from whichever tower happens to be first
    with torch.no_grad():
        for _, module in method.tower_modules(ema=True):
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    method.eval()
    towers = {t.path: m for t, m in method.tower_modules()}
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = RECOMPUTE[name](towers, x)
        alone = method.head_embed(x)
        given = method.head_embed(x, method.export_module()(x))  # as the health monitor calls it
    assert alone.shape == (5, dim)
    torch.testing.assert_close(alone, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(given, expected, rtol=1e-5, atol=1e-6)
    assert not any(m.training for m in method.modules())  # it left the modes alone


def _entropy_reference(scores: torch.Tensor, temperature: float) -> float:
    p = torch.softmax(scores.double() / temperature, dim=1)
    return float(-(p * p.log()).sum(dim=1).mean() / math.log(scores.shape[1]))


def _occupancy_reference(scores: torch.Tensor) -> float:
    return len(set(scores.argmax(dim=1).tolist())) / min(scores.shape)


def test_swav_probe_signals_score_the_embeddings_against_the_prototypes(one_thread):
    method, _ = _build("swav")
    z = F.normalize(torch.randn(40, 16), dim=1)
    signals = method.probe_signals(z)
    scores = z @ method.prototypes.weight.detach().t()
    assert sorted(signals) == ["health_code_entropy", "health_code_occupancy"]
    assert signals["health_code_entropy"] == pytest.approx(_entropy_reference(scores, method.cfg.temperature))
    assert signals["health_code_occupancy"] == pytest.approx(_occupancy_reference(scores))
    assert "health_code_occupancy" in {s.name for s in method.collapse_signals()}


def test_deepclusterv2_probe_signals_average_the_prototype_sets_once_clustered(one_thread):
    method, _ = _build("deepclusterv2")
    z = F.normalize(torch.randn(30, 16), dim=1)
    assert method.probe_signals(z) == {}  # random prototypes before the first k-means
    method.assignments = torch.zeros(2, 6, dtype=torch.long)  # as after cluster_memory
    signals = method.probe_signals(z)
    sets = [z @ protos.weight.t() for protos in method.prototypes]
    entropy = sum(_entropy_reference(s, method.cfg.temperature) for s in sets) / 2
    assert signals["health_code_entropy"] == pytest.approx(entropy)
    assert signals["health_code_occupancy"] == pytest.approx(sum(_occupancy_reference(s) for s in sets) / 2)


def test_a_method_without_an_output_tower_declares_none():
    assert Method().head_embed(torch.randn(2, 3, 8, 8)) is None and Method().probe_signals(torch.randn(2, 4)) == {}
