"""The original models of foreign checkpoints, re-created in the test with their own module and key names.

Each writer builds the model as its reference code does (torchvision's RegNet is the ClassyVision AnyNet that
VISSL wraps; SwAV's and DINO's ResNet-50 are torchvision-named ResNets; the heads are written here after
facebookresearch/swav ``src/resnet50.py``, VISSL ``swav_prototypes_head.py`` and dino ``DINOHead``), randomises
every tensor (batch-norm statistics included), and saves it in the original file layout. The renaming from
torchvision to ClassyVision names is written here independently of openseer's tables.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.regnet import BlockParams, RegNet

TINY_REGNET = {"depth": 4, "w0": 8, "wa": 12.0, "wm": 1.5, "group_size": 8, "se_ratio": 0.25}
TINY_REGNET_SPEC = {"regnet_cfg": TINY_REGNET}


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and plausible batch-norm statistics, so that every tensor matters in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not torch.is_tensor(t) or not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("weight") and t.ndim == 1:  # norm scales
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                fan_in = t[0].numel() if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / fan_in**0.5)
    return module.eval()


def torchvision_tiny_regnet(seed: int = 0) -> nn.Module:
    p = TINY_REGNET
    params = BlockParams.from_init_params(
        depth=p["depth"], w_0=p["w0"], w_a=p["wa"], w_m=p["wm"], group_width=p["group_size"], se_ratio=p["se_ratio"]
    )
    model = RegNet(params)
    model.fc = nn.Identity()
    return randomise(model, seed)


def torchvision_resnet18(seed: int = 0) -> nn.Module:
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    return randomise(model, seed)


def classy_names(tv_state: dict[str, torch.Tensor], fsdp_parts: bool = False) -> dict[str, torch.Tensor]:
    """torchvision RegNet names -> ClassyVision/VISSL trunk names (``_feature_blocks.*``)."""
    out = {}
    inner = {
        "proj.0.": "proj.",
        "proj.1.": "bn.",
        "f.se.fc1.": "f.se.excitation.0.",
        "f.se.fc2.": "f.se.excitation.2.",
        "f.c.0.": "f.c.",
        "f.c.1.": "f.final_bn.",
    }
    for k, v in tv_state.items():
        if k.startswith("fc."):
            continue
        k = k.replace("stem.", "_feature_blocks.conv1.stem.", 1) if k.startswith("stem.") else k
        m = re.match(r"trunk_output\.block(\d+)\.block\d+-(\d+)\.(.*)", k)
        if m:
            stage, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            for a, b in inner.items():
                if rest.startswith(a):
                    rest = b + rest[len(a) :]
            part = f"block{stage}-part0." if fsdp_parts else ""
            k = f"_feature_blocks.res{stage + 1}.{part}block{stage}-{block}.{rest}"
        out[k] = v
    return out


class SwAVHead(nn.Module):
    """facebookresearch/swav's projection head (Linear with bias -> BN -> ReLU -> Linear) and prototypes."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, k: int, seed: int = 1):
        super().__init__()
        self.projection_head = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
        )
        self.prototypes = nn.Linear(out_dim, k, bias=False)
        randomise(self, seed)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.normalize(self.projection_head(feats), dim=1)
        return z, self.prototypes(z)


class DINOHead(nn.Module):
    """dino's DINOHead: MLP (GELU) to a bottleneck, L2 norm, weight-normalised last layer."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int, seed: int = 2):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        randomise(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def write_vissl(path: Path, trunk: nn.Module, head: SwAVHead | None, fsdp_parts: bool = False) -> Path:
    heads = {}
    if head is not None:
        for k, v in head.projection_head.state_dict().items():
            heads[f"0.projection_head.{k}"] = v
        heads["0.prototypes0.weight"] = head.prototypes.weight.detach()
    state = {
        "classy_state_dict": {
            "base_model": {"model": {"trunk": classy_names(trunk.state_dict(), fsdp_parts), "heads": heads}},
            "meta": {"phase_idx": 3},
        },
        "phase_idx": 3,
        "iteration": 1000,
        "type": "checkpoint",
    }
    torch.save(state, path)
    return path


def write_swav(path: Path, trunk: nn.Module, head: SwAVHead, training_checkpoint: bool = True) -> Path:
    state = {f"module.{k}": v for k, v in trunk.state_dict().items() if not k.startswith("fc.")}
    state.update({f"module.{k}": v for k, v in head.state_dict().items()})
    if training_checkpoint:
        torch.save({"epoch": 3, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    else:
        torch.save(state, path)
    return path


def write_dino(path: Path, trunk: nn.Module, head: DINOHead) -> Path:
    # a ResNet has batch norms, so DINO wraps the teacher in DDP too: both carry ``module.``
    teacher = {f"module.backbone.{k}": v for k, v in trunk.state_dict().items()}
    teacher.update({f"module.head.{k}": v for k, v in head.state_dict().items()})
    student = {k: v + 1.0 if v.is_floating_point() else v for k, v in teacher.items()}
    args = argparse.Namespace(arch="resnet18", out_dim=head.last_layer.weight_v.shape[0], lr=0.0005)
    center = torch.randn(1, head.last_layer.weight_v.shape[0])
    torch.save(
        {
            "student": student,
            "teacher": teacher,
            "optimizer": {},
            "epoch": 5,
            "args": args,
            "dino_loss": {"center": center},
        },
        path,
    )
    return path
