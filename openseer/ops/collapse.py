"""The collapse signature of joint-embedding methods (SimSiam, Chen & He 2021, sec. 4.1 and fig. 2).

If every image maps to the same embedding, the per-dimension standard deviation of the l2-normalised outputs
is 0; for outputs spread like a d-dimensional isotropic Gaussian it is about 1/sqrt(d). BYOL and SimSiam can
collapse while their loss looks perfect (it reaches its minimum), so openseer logs this value as ``z_std``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the std over the batch of ``normalize(z)`` (no gradient): 0 = collapsed."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()
