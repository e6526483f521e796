"""DINO training step vs its bound: bare student forward+backward plus teacher forward on the same crops.

Variants are alternated (A B A B ...) in one process so the machine's drift hits them alike; the ratio is
what counts (issue 9 aims at <= 1.05).

    PYTHONPATH=. .venv/bin/python benchmarks/dino_step_overhead.py --preset dino-cifar10 --precision fp32 bf16
    PYTHONPATH=. .venv/bin/python benchmarks/dino_step_overhead.py --preset dino-cifar10-regnet train.batch_size=64

* ``bound``: student backbone + DINO head (projection + last layer) forward and backward on every crop (one
  backbone call per resolution), the teacher's forward on the global crops without gradient; loss = sum of
  the student's outputs. No loss function, no optimizer, no EMA.
* ``dino``: the loop's own ``openseer.train.train_step``: schedules, ``before_step``, forward (both networks,
  centring, sharpening, the cross-entropy over view pairs), backward, gradient norm and clipping, the
  optimizer step over the method's parameter groups (none frozen here), ``after_step`` (centre + teacher EMA).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from openseer.config import derive, load_config
from openseer.methods.base import RunInfo
from openseer.methods.registry import get_method
from openseer.models.backbone import build_backbone
from openseer.models.heads import multicrop_forward
from openseer.train import build_trainer, train_step


def make_crops(cfg, batch: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sizes = [cfg.aug.global_size] * cfg.aug.global_crops + [cfg.aug.local_size] * cfg.aug.local_crops
    return [torch.randn(batch, 3, s, s, generator=g) for s in sizes]


def build(cfg):
    torch.manual_seed(0)
    derived = derive(cfg, dataset_size=cfg.train.batch_size * 1000)
    method = get_method("dino").build(cfg, build_backbone(cfg.model), RunInfo.of(cfg, derived))
    return method, build_trainer(cfg, method, derived, torch.device("cpu"))


def step_bound(method, crops, amp) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        with torch.no_grad():
            method.teacher(crops[: method.n_global])
        loss = method.last_layer(multicrop_forward(method.backbone, method.head, crops)).float().sum()
    loss.backward()
    method.zero_grad(set_to_none=True)
    return float(loss.detach())


def measure(cfg, precision: str, repeats: int, warmup: int) -> dict:
    method, trainer = build(cfg)
    crops = make_crops(cfg, cfg.train.batch_size)
    amp = precision == "bf16"
    times: dict[str, list[float]] = {"bound": [], "dino": []}
    nonfinite = 0
    for i in range(warmup + repeats):
        for name in ("bound", "dino"):
            t = time.perf_counter()
            if name == "bound":
                value = step_bound(method, crops, amp)
            else:
                result = train_step(trainer, [crops], step=i, epoch=0)
                value = result.loss if result.finite else float("nan")
            dt = time.perf_counter() - t
            nonfinite += not math.isfinite(value)
            if i >= warmup:
                times[name].append(dt)
    bound, dino = statistics.median(times["bound"]), statistics.median(times["dino"])
    batch = cfg.train.batch_size
    return {
        "preset_backbone": cfg.model.backbone,
        "precision": precision,
        "batch": batch,
        "crops": f"{cfg.aug.global_crops}x{cfg.aug.global_size} + {cfg.aug.local_crops}x{cfg.aug.local_size}",
        "bound_s": bound,
        "dino_s": dino,
        "ratio": dino / bound,
        "dino_img_s": batch / dino,
        "nonfinite_steps": nonfinite,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dino-cifar10")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=64")
    args = p.parse_args()
    for precision in args.precision:
        # no frozen last layer: the step does its full work from the first iteration
        overrides = ["dino.freeze_last_layer_epochs=0", *args.overrides, f"train.precision={precision}"]
        cfg = load_config(args.preset, overrides)
        print(json.dumps(measure(cfg, precision, args.repeats, args.warmup)))


if __name__ == "__main__":
    main()
