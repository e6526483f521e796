"""SwAV training step vs the bare backbone forward+backward on the same crops (the bound), in one process.

Variants are alternated (A B A B ...) so the machine's drift hits them alike; the ratio is what counts.

    PYTHONPATH=. .venv/bin/python benchmarks/step_overhead.py --preset cifar10 --precision fp32 bf16
    PYTHONPATH=. .venv/bin/python benchmarks/step_overhead.py --preset cifar10 --end-to-end \
        --data ../shared/data/cifar10/cifar10-train.tar

* ``bound``: backbone forward+backward on the multi-crop batch (one call per resolution, as SwAV does),
  loss = sum of pooled features; no head, no optimizer.
* ``swav``: the full training step of openseer's loop: prototype normalisation, backbone + projection head +
  prototypes, Sinkhorn codes, swapped-prediction loss, backward, LARS step.
* ``--end-to-end``: images/s of ``openseer.train.pretrain`` on real data (decoding + multi-crop augmentation
  included) for a fixed number of steps, next to the model-only rate.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time

import torch

from openseer.config import load_config, run_info
from openseer.methods import METHODS, StepContext
from openseer.models.backbone import build_backbone
from openseer.train import build_optimizer


def make_crops(cfg, batch: int, memory_format) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sizes = [cfg.aug.global_size] * cfg.aug.global_crops + [cfg.aug.local_size] * cfg.aug.local_crops
    return [torch.randn(batch, 3, s, s, generator=g).contiguous(memory_format=memory_format) for s in sizes]


def build(cfg, precision: str):
    torch.manual_seed(0)
    channels_last = precision == "bf16" and cfg.model.channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    info = run_info(cfg)
    method = METHODS["swav"].build(cfg, build_backbone(cfg.model), info).to(memory_format=fmt)
    method.info = info  # for the StepContext of each step
    opt, _ = build_optimizer(cfg, method)
    for group in opt.param_groups:
        group["lr"] = 0.1
    return method, opt, fmt


def step_bound(method, crops, amp) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = []
        start = 0
        while start < len(crops):  # same grouping by resolution as SwAV.embed
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            out.append(method.backbone(torch.cat(crops[start:end])))
            start = end
        loss = torch.cat(out).float().sum()
    loss.backward()
    method.zero_grad(set_to_none=True)
    return float(loss.detach())


def step_swav(method, opt, crops, amp) -> float:
    ctx = StepContext(0, 0, method.info)
    method.before_step(ctx)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = method(crops, ctx).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def measure(cfg, precision: str, repeats: int, warmup: int) -> dict:
    method, opt, fmt = build(cfg, precision)
    crops = make_crops(cfg, cfg.train.batch_size, fmt)
    amp = precision == "bf16"
    times = {"bound": [], "swav": []}
    nonfinite = 0
    for i in range(warmup + repeats):
        for name in ("bound", "swav"):
            t = time.perf_counter()
            value = step_bound(method, crops, amp) if name == "bound" else step_swav(method, opt, crops, amp)
            dt = time.perf_counter() - t
            nonfinite += not math.isfinite(value)
            if i >= warmup:
                times[name].append(dt)
    bound, swav = statistics.median(times["bound"]), statistics.median(times["swav"])
    batch = cfg.train.batch_size
    return {
        "precision": precision,
        "channels_last": fmt == torch.channels_last,
        "batch": batch,
        "bound_s": bound,
        "swav_s": swav,
        "ratio": swav / bound,
        "bound_img_s": batch / bound,
        "swav_img_s": batch / swav,
        "nonfinite_steps": nonfinite,
    }


def end_to_end(cfg, data: str, steps: int) -> dict:
    from openseer.train import pretrain

    cfg.data.path = data
    cfg.train.max_steps = steps
    cfg.train.log_every = steps
    with tempfile.TemporaryDirectory() as out:
        summary = pretrain(cfg, out)
        rows = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    return {
        "steps": summary["steps"],
        "images_per_s": rows[-1]["images_per_s"],
        "nonfinite_steps": summary["nonfinite_steps"],
        "skipped_images": summary["skipped_images"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cifar10")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--end-to-end", action="store_true")
    p.add_argument("--data", default="../shared/data/cifar10/cifar10-train.tar")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    for precision in args.precision:
        cfg = load_config(args.preset, [*args.overrides, f"train.precision={precision}"])
        r = measure(cfg, precision, args.repeats, args.warmup)
        print(json.dumps(r))
        if args.end_to_end:
            e = end_to_end(cfg, args.data, args.steps)
            e["model_only_img_s"] = r["swav_img_s"]
            e["loader_share"] = e["images_per_s"] / r["swav_img_s"]
            print(json.dumps({"end_to_end": e, "precision": precision}))


if __name__ == "__main__":
    main()
