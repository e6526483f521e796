"""Training step of each two-view method vs the bare backbone forward+backward on the same crops (the bound).

One process, variants alternated (bound, step, bound, step, ...) so the machine's drift hits them alike; the
ratio step / bound is what counts (issue: aim <= 1.05x).

    PYTHONPATH=. .venv/bin/python benchmarks/method_step_overhead.py train.batch_size=128 \
        --methods simclr mocov3 byol simsiam --precision fp32 bf16 --repeats 10

(config overrides go first: ``--methods`` and ``--precision`` take every word after them.)

* ``bound``: the backbone's forward+backward on both views, called as the method calls it (SimCLR: one
  batch of both views; the others: one call per view), loss = sum of pooled features; for the EMA methods
  (MoCo v3, BYOL) plus the no-grad forward of the target backbone on both views, which the method cannot avoid.
  No heads, no optimizer.
* ``step``: the whole step as the loop runs it: ``before_step``, forward (backbone, heads, target network,
  loss), backward, optimizer step, ``after_step``.
Each method uses its ``<method>-cifar10`` preset (overrides apply to all, e.g. ``train.batch_size=256``).
Non-finite losses are counted: a skipped step looks like a fast one.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from openseer.config import load_config
from openseer.methods.base import RunInfo, StepContext
from openseer.methods.registry import get_method
from openseer.models.backbone import build_backbone

EMA_TARGETS = {"mocov3": "momentum_backbone", "byol": "target_backbone"}
JOINT_VIEWS = {"simclr"}  # methods that run both views through the backbone as one batch


def build(cfg, precision: str, steps: int):
    torch.manual_seed(0)
    fmt = torch.channels_last if precision == "bf16" and cfg.model.channels_last else torch.contiguous_format
    b = cfg.train.batch_size
    info = RunInfo(b, b, 1, 1, steps, steps)
    method = get_method(cfg.method).build(cfg, build_backbone(cfg.model), info).to(memory_format=fmt)
    groups = [g.as_optimizer_group() for g in method.param_groups(method.named_parameters(), cfg.optim)]
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # the optimizer is a small share of either variant
    g = torch.Generator().manual_seed(0)
    s = cfg.aug.global_size
    crops = [torch.randn(b, 3, s, s, generator=g).contiguous(memory_format=fmt) for _ in range(2)]
    return method, opt, crops, info


def step_bound(method, crops, amp: bool) -> float:
    target = getattr(method, EMA_TARGETS.get(method.name, ""), None)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        if method.name in JOINT_VIEWS:
            feats = [method.backbone(torch.cat(crops))]
        else:
            feats = [method.backbone(x) for x in crops]
        if target is not None:
            with torch.no_grad():
                for x in crops:
                    target(x)
        loss = torch.cat(feats).float().sum()
    loss.backward()
    method.zero_grad(set_to_none=True)
    return float(loss.detach())


def step_method(method, opt, crops, amp: bool, ctx: StepContext) -> float:
    method.before_step(ctx)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = method(crops, ctx).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    method.after_step(ctx)
    return float(loss.detach())


def measure(cfg, precision: str, repeats: int, warmup: int) -> dict:
    method, opt, crops, info = build(cfg, precision, warmup + repeats)
    amp = precision == "bf16"
    times: dict[str, list[float]] = {"bound": [], "step": []}
    nonfinite = 0
    for i in range(warmup + repeats):
        for name in ("bound", "step"):
            t = time.perf_counter()
            if name == "bound":
                value = step_bound(method, crops, amp)
            else:
                value = step_method(method, opt, crops, amp, StepContext(i, 0, info))
            dt = time.perf_counter() - t
            nonfinite += not math.isfinite(value)
            if i >= warmup:
                times[name].append(dt)
    bound, step = statistics.median(times["bound"]), statistics.median(times["step"])
    b = cfg.train.batch_size
    return {
        "method": cfg.method,
        "precision": precision,
        "batch": b,
        "bound_s": bound,
        "step_s": step,
        "ratio": step / bound,
        "step_img_s": b / step,
        "nonfinite_steps": nonfinite,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["simclr", "mocov3", "byol", "simsiam"])
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    for method in args.methods:
        for precision in args.precision:
            cfg = load_config(f"{method}-cifar10", [*args.overrides, f"train.precision={precision}"])
            print(json.dumps(measure(cfg, precision, args.repeats, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
