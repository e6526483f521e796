"""Small matrix helpers shared by the redundancy-reduction losses (Barlow Twins, VICReg)."""

from __future__ import annotations

import torch


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square (n, n) matrix, flattened row by row (n * (n - 1) values).

    The reshaping trick of facebookresearch/barlowtwins and vicreg ``off_diagonal``: dropping the last entry of
    the flattened matrix and viewing it as (n - 1, n + 1) puts every diagonal entry in column 0.
    """
    n, m = x.shape
    if n != m:
        raise ValueError(f"off_diagonal needs a square matrix, got {n} x {m}")
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()
