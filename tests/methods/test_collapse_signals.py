"""Every method's declared collapse signals (Method.collapse_signals) name a scalar the method logs (or a
health_* signal of the run), with the lines of docs/methods.md."""

from __future__ import annotations

import math

import pytest
import torch

from openseer.config import load_config
from openseer.methods.base import RANK_COLLAPSE
from openseer.methods.registry import get_method
from openseer.models.backbone import build_backbone
from tests.helpers import run_info, step_ctx

COMMON = ["model.backbone=regnetx_002", "aug.local_crops=0", "aug.global_size=16", "train.batch_size=6"]
TINY = {
    "simsiam-cifar10": ["simsiam.hidden_dim=32", "simsiam.output_dim=16", "simsiam.predictor_hidden_dim=8"],
    "byol-cifar10": ["byol.hidden_dim=32", "byol.output_dim=16"],
    "mocov3-cifar10": ["mocov3.hidden_dim=32", "mocov3.output_dim=16"],
    "simclr-cifar10": ["simclr.hidden_dim=32", "simclr.output_dim=16"],
    "vicreg-cifar10": ["vicreg.projector_dims=[32,32]"],
    "barlowtwins-cifar10": ["barlowtwins.projector_dims=[32,32]"],
    "demo": ["swav.hidden_dims=[32]", "swav.output_dim=16", "swav.num_prototypes=10", "swav.queue_length=0"],
    "dino-cifar10-regnet": ["dino.hidden_dim=32", "dino.bottleneck_dim=16", "dino.out_dim=20"],
}
OWN = {  # the method's own signature (besides health_rankme), its lines
    "simsiam": [("z_std", 0.1 / math.sqrt(16))],
    "byol": [("z_std", 0.1 / math.sqrt(16))],
    "mocov3": [("z_std", 0.1 / math.sqrt(16))],
    "simclr": [("z_std", 0.1 / math.sqrt(16))],
    "vicreg": [("embedding_std", 0.1)],
    "swav": [("occupancy", 0.1), ("health_code_occupancy", 0.1)],  # of the batch, of the probe set
    "dino": [("kl", 1e-3)],
}


@pytest.mark.parametrize("preset", sorted(TINY))
def test_declared_signals_are_logged_scalars(preset):
    cfg = load_config(preset, [*COMMON, *TINY[preset]])
    torch.manual_seed(0)
    method = get_method(cfg.method).build(cfg, build_backbone(cfg.model), run_info(6))
    signals = method.collapse_signals()
    assert signals[0] == RANK_COLLAPSE  # every method keeps the backbone RankMe line
    own = [(s.name, s.line) for s in signals[1:]]
    assert own == [pytest.approx(o) for o in OWN.get(cfg.method, [])]
    crops = [torch.randn(6, 3, 16, 16) for _ in range(2)]
    out = method(crops, step_ctx(info=run_info(6)))
    with torch.no_grad():  # a health_* line is read from the health check's row: the method's probe signals
        method.eval()
        z = method.head_embed(crops[0])
        probe = method.probe_signals(z) if z is not None else {}
    for s in signals[1:]:
        logged = probe if s.name.startswith("health_") else out.scalars
        assert s.name in logged, f"{cfg.method} declares {s.name} but logs {sorted(logged)}"
        assert s.remedy and not s.crossed(float(logged[s.name]))  # an untrained model is not collapsed
