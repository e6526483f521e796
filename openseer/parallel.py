"""Wrapping a method for data parallelism, from outside the model (methods never import DDP/FSDP).

At world size 1 the model is returned as is. With several processes it is wrapped in DDP; batch-norm
statistics stay per process here (synchronised batch norm and FSDP2 sharding arrive with the scale-out work).
"""

from __future__ import annotations

import torch
from torch import nn

from openseer import dist


def wrap_data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    if dist.world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # SwAV's loss uses every parameter each step, but frozen prototypes receive no update: gradients still
    # flow to them, so find_unused_parameters is not needed.
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=True)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)
