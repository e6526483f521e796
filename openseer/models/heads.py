"""Projection heads and prototypes.

:class:`ProjectionMLP` and :class:`Prototypes`: SwAV (Caron et al. 2020, sec. 3.1; facebookresearch/swav
resnet50.py). :class:`MLP`: the projector/predictor of the two-view methods (SimCLR, MoCo v3, BYOL, SimSiam),
and the projectors of Barlow Twins and VICReg, whose references differ only in biases and the output layer's
batch norm. :class:`DINOProjection` and
:class:`WeightNormLinear`: DINO's head (Caron et al. 2021; facebookresearch/dino vision_transformer.py).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionMLP(nn.Module):
    """Linear -> BN -> ReLU blocks, then a linear layer to ``out_dim``; output L2-normalised.

    ``dims = [in, hidden..., out]``. SwAV uses [2048, 2048, 128] with BN; SEER-256GF uses [10444, 8192, 8192, 256]
    without BN (``batch_norm=False``).
    """

    def __init__(self, dims: list[int], batch_norm: bool = True):
        super().__init__()
        self.mlp = MLP(dims, batch_norm)  # the same layers and parameter names as SwAV's / VISSL's head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=1)


class Prototypes(nn.Module):
    """K prototype vectors (a bias-free linear layer); scores are dot products with unit-norm embeddings."""

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.normal_(self.weight)
        self.normalize()

    @torch.no_grad()
    def normalize(self) -> None:
        """Project prototypes back onto the unit sphere (SwAV does this before every step)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.t()


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight normalisation (Salimans & Kingma 2016): ``W_i = g_i v_i / ||v_i||``.

    The same function as ``torch.nn.utils.parametrizations.weight_norm(nn.Linear(d, k, bias=False))`` with its
    norm ``g`` set to 1, written out so that the weights are two plain parameters: FSDP2 shards them, state
    dicts and deep copies (a DINO teacher) need no parametrization machinery. With ``learn_norm=False`` (DINO's
    ``norm_last_layer``) there is no ``g`` at all: every row of the weight is a unit vector.
    """

    def __init__(self, in_dim: int, out_dim: int, learn_norm: bool = False):
        super().__init__()
        # v starts as nn.Linear's default init, as in the reference (its trunc_normal init runs before this layer)
        self.weight = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        # (out, 1) like weight_norm's weight_g: 2-d, so weight decay applies to it as in the reference
        self.norm = nn.Parameter(torch.ones(out_dim, 1)) if learn_norm else None

    def normalized_weight(self) -> torch.Tensor:
        w = F.normalize(self.weight, dim=1)
        return w * self.norm if self.norm is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight())


class DINOProjection(nn.Module):
    """DINO's projection head up to its bottleneck (Caron et al. 2021, sec. 3.1; facebookresearch/dino
    ``vision_transformer.py`` ``DINOHead.mlp`` + the L2 normalisation of its ``forward``).

    ``nlayers`` linear layers with GELU between them (optionally BN) map the backbone feature to a
    ``bottleneck_dim`` unit vector. Its linear layers get a truncated normal init with std 0.02 and zero
    biases, as in the reference. DINO's last layer, a :class:`WeightNormLinear` of ``out_dim`` outputs (the
    "prototypes"), is kept beside it by the method, as SwAV keeps its prototypes beside its projection head:
    ``last_layer(projection(x))`` is the reference ``DINOHead(x)``.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3, use_bn: bool = False
    ):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (max(nlayers, 1) - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                if use_bn:
                    layers.append(nn.BatchNorm1d(dims[i + 1]))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1, p=2)


class MLP(nn.Sequential):
    """``dims = [in, hidden..., out]``: (Linear -> BatchNorm1d -> ReLU) per hidden layer, then Linear [-> BN].

    No output normalisation: the losses normalise. Hidden linear layers have no bias when batch norm follows
    (its shift makes a bias redundant) unless ``hidden_bias`` says otherwise (VICReg's expander keeps them;
    Barlow Twins' projector, ``last_bias=False``, has none). ``last_bn`` chooses the output layer of each reference:

    - ``"none"``: Linear with a bias (``last_bias``): SimSiam predictor (2048 -> 512 -> 2048); without one
      (``last_bias=False``): BYOL projector and predictor (hidden 4096, out 256), MoCo v3's ResNet predictor;
    - ``"plain"``: Linear without bias, BN without affine parameters: MoCo v3 projector ("follow SimCLR's
      design") and ViT predictor, SimSiam projector;
    - ``"scale"``: Linear without bias, BN with a learnt scale and no shift: SimCLR v2 (``center=False``).

    With ``batch_norm=False`` hidden layers are Linear (with bias) -> ReLU and ``last_bn`` must be ``"none"``.
    Batch norms are plain ``nn.BatchNorm1d``; ``openseer.parallel`` makes them all-reduce across processes.
    """

    def __init__(
        self,
        dims: list[int],
        batch_norm: bool = True,
        last_bn: Literal["none", "plain", "scale"] = "none",
        last_bias: bool = True,
        hidden_bias: bool | None = None,
    ):
        if len(dims) < 2:
            raise ValueError(f"MLP needs at least [in, out] dims, got {dims}")
        if not batch_norm and last_bn != "none":
            raise ValueError("MLP: last_bn needs batch_norm=True")
        layers: list[nn.Module] = []
        for i in range(len(dims) - 2):
            bias = not batch_norm if hidden_bias is None else hidden_bias
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
            if batch_norm:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(dims[-2], dims[-1], bias=last_bias and last_bn == "none"))
        if last_bn != "none":
            bn = nn.BatchNorm1d(dims[-1], affine=last_bn == "scale")
            if last_bn == "scale":  # a scale and no shift: the shift stays 0 and takes no gradient
                bn.bias.requires_grad_(False)
            layers.append(bn)
        super().__init__(*layers)


def multicrop_forward(backbone: nn.Module, head: nn.Module, crops: list[torch.Tensor]) -> torch.Tensor:
    """Head outputs of all crops, crop-major (rows [c*B:(c+1)*B] belong to crop c). Consecutive crops of one
    resolution share one backbone call (SwAV's multi-crop forward, DINO's ``MultiCropWrapper``), so 2 global
    + 6 local crops cost two backbone calls; the head then runs once on every feature."""
    feats, start = [], 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
            end += 1
        feats.append(backbone(torch.cat(crops[start:end])))
        start = end
    return head(torch.cat(feats))
