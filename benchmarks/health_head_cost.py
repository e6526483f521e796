"""Extra cost of the method-output health signals (issue 23): one health check with the backbone's signals only
vs with the method's output embedding (``head_embed``) and probe signals too, per preset.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/health_head_cost.py --data POOL \
        [--presets cifar10,byol-cifar10] [--images 256] [--repeats 5]

Each preset's method is built untrained at its full size; a :class:`~openseer.train.health.HealthMonitor` holds
``--images`` pool images at the preset's evaluation transform. Timed ``--repeats`` times, alternating (medians):
``evaluate(backbone)`` (today's check), ``evaluate(backbone, method)`` (with the output embedding), and inside a
check the backbone pass alone and the head pass alone (``head_embed`` given the backbone's features, as the monitor
calls it). Prints one JSON line per preset.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from openseer.config import RunInfo, load_config
from openseer.eval.settings import FROM_RUN
from openseer.methods.registry import get_method
from openseer.models.backbone import build_backbone
from openseer.train.health import HealthMonitor


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(preset: str, data: str, images: int, repeats: int) -> dict:
    cfg = load_config(preset, [f"data.path={data}"])
    torch.manual_seed(0)
    info = RunInfo(cfg.train.batch_size, cfg.train.batch_size, 1, 1, 100, 1000)
    method = get_method(cfg.method).build(cfg, build_backbone(cfg.model), info)
    backbone = method.export_module()
    run = FROM_RUN.resolve(cfg)
    monitor = HealthMonitor(
        data, images, run.image_size, run.crop_pct, run.mean, run.std, every=1, log_every=1, batch_size=run.batch_size
    )
    batches = monitor.images.split(monitor.batch_size)

    @torch.no_grad()
    def passes() -> tuple[float, float]:
        method.eval()
        feats = [backbone(x) for x in batches]  # warm; the timed passes follow
        t_backbone = _seconds(lambda: [backbone(x) for x in batches])
        t_head = _seconds(lambda: [method.head_embed(x, f) for x, f in zip(batches, feats, strict=True)])
        method.train()
        return t_backbone, t_head

    monitor.evaluate(backbone, method)  # warm-up
    plain, full, bb, head = [], [], [], []
    for _ in range(repeats):
        plain.append(_seconds(lambda: monitor.evaluate(backbone)))
        full.append(_seconds(lambda: monitor.evaluate(backbone, method)))
        b, h = passes()
        bb.append(b)
        head.append(h)
    med = {k: statistics.median(v) for k, v in dict(plain=plain, full=full, bb=bb, head=head).items()}
    return {
        "preset": preset,
        "method": cfg.method,
        "backbone": cfg.model.backbone,
        "probe_images": len(monitor.images),
        "image_size": run.image_size,
        "threads": torch.get_num_threads(),
        "check_s_backbone_only": round(med["plain"], 4),
        "check_s_with_head": round(med["full"], 4),
        "extra_per_check": round(med["full"] / med["plain"] - 1, 4),
        "backbone_pass_s": round(med["bb"], 4),
        "head_pass_s": round(med["head"], 4),
        "head_pass_per_backbone_pass": round(med["head"] / med["bb"], 4),
        "row_keys": sorted(monitor.evaluate(backbone, method)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="pool of images (folder or tar)")
    ap.add_argument("--presets", default="cifar10,byol-cifar10", help="comma-separated presets")
    ap.add_argument("--images", type=int, default=256, help="probe images")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    for preset in args.presets.split(","):
        print(json.dumps(measure(preset, args.data, args.images, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
