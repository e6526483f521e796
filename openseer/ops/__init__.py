"""Small numerical building blocks: Sinkhorn-Knopp, LARS, per-step schedules."""

from openseer.ops.lars import LARS
from openseer.ops.schedules import cosine_schedule, step_function_schedule
from openseer.ops.sinkhorn import sinkhorn_knopp

__all__ = ["LARS", "cosine_schedule", "step_function_schedule", "sinkhorn_knopp"]
