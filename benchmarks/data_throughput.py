"""Input pipeline throughput: folder vs shards, reference vs fast multi-crop, and the end-to-end step.

    python benchmarks/data_throughput.py --cifar ../shared/data/cifar10/cifar10-train.tar --rounds 3

For each data set (CIFAR-10 JPEGs, generated ~500 px JPEGs, generated 1600 px JPEGs) the images are unpacked
to a scratch folder and packed into shards, then every variant is timed in turn, A B C D A B C D ... (this
machine's speed drifts; compare ratios within a round). Everything runs in the main process (0 workers,
what auto_num_workers picks on 2 cores). Prints a markdown table; --e2e adds the pretraining step of the
cifar10 preset: model only (a fixed batch) vs fed by each pipeline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openseer.config import AugConfig, load_config  # noqa: E402
from openseer.data.fast import BatchColorAugment, FastCropTransform  # noqa: E402
from openseer.data.images import load_rgb  # noqa: E402
from openseer.data.loader import EpochSampler, PretrainDataset, build_pretrain_loader  # noqa: E402
from openseer.data.pack import write_shards  # noqa: E402
from openseer.data.shards import ShardSet, iter_shard  # noqa: E402
from openseer.data.sources import open_source  # noqa: E402
from openseer.data.stream import ShardStream  # noqa: E402
from openseer.data.transforms import MultiCropTransform  # noqa: E402


def unpack_cifar(tar_path: str, out: Path, n: int) -> Path:
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar if m.isreg()]
        step = max(1, len(members) // n)
        for m in members[::step][:n]:
            (out / m.name).parent.mkdir(parents=True, exist_ok=True)
            (out / m.name).write_bytes(tar.extractfile(m).read())
    return out


def generate_jpegs(out: Path, n: int, width: int, height: int) -> Path:
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    for i in range(n):
        c = rng.uniform(0.3, 1.0, 3)
        base = np.stack([255 * c[0] * x, 255 * c[1] * y, 255 * c[2] * (1 - x)], -1)
        small = rng.normal(0, 40, (height // 8 + 1, width // 8 + 1, 3))
        texture = np.kron(small, np.ones((8, 8, 1)))[:height, :width]
        img = Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8))
        img.save(out / f"{i:05d}.jpg", quality=90)
    return out


def source_rate(path: Path, shards: str, n: int) -> dict[str, float]:
    """Read + decode only, images/s."""
    t = time.perf_counter()
    src = open_source(path)
    for i in range(min(n, len(src))):
        load_rgb(src.read(i))
    folder = min(n, len(src)) / (time.perf_counter() - t)
    t, k = time.perf_counter(), 0
    for url in ShardSet(shards).urls:
        for rec in iter_shard(url):
            load_rgb(rec.data)
            k += 1
    return {"folder": folder, "shards": k / (time.perf_counter() - t)}


def pipeline_rate(kind: str, fast: bool, path: Path, shards: str, aug: AugConfig, batch: int, steps: int):
    transform = FastCropTransform(aug) if fast else MultiCropTransform(aug)
    colour = BatchColorAugment(aug) if fast else None
    if kind == "folder":
        src = open_source(path)
        sampler = EpochSampler(len(src), batch, seed=0)
        loader = build_pretrain_loader(PretrainDataset(src, transform), sampler, batch, 0)
    else:
        loader = ShardStream(ShardSet(shards), transform, batch, batch_transform=colour, shuffle_buffer=200)
    t, images = time.perf_counter(), 0
    for k, b in enumerate(loader):
        if colour is not None and kind == "folder":
            b.crops = colour(b.crops, torch.Generator().manual_seed(k))
        images += len(b.indices)
        if k + 1 == steps:
            break
    return images / (time.perf_counter() - t)


def model_only_rate(cfg, steps: int) -> float:
    from openseer.config import run_info
    from openseer.methods import METHODS, StepContext
    from openseer.models.backbone import build_backbone

    info = run_info(cfg)
    method = METHODS[cfg.method].build(cfg, build_backbone(cfg.model), info)
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    a, b = cfg.aug, cfg.train.batch_size
    crops = [torch.randn(b, 3, a.global_size, a.global_size)] * a.global_crops
    crops += [torch.randn(b, 3, a.local_size, a.local_size)] * a.local_crops
    dtype = {"bf16": torch.bfloat16}.get(cfg.train.precision)
    times = []
    for k in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = method(crops, StepContext(0, 0, info)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k:  # the first step warms up
            times.append(time.perf_counter() - t)
    return b / statistics.median(times)


def e2e_rate(cfg_overrides: list[str], shards: str, out: Path, steps: int) -> float:
    import json

    from openseer.train import pretrain

    cfg = load_config("cifar10", [*cfg_overrides, f"data.path={shards}", f"train.max_steps={steps}"])
    pretrain(cfg, out, resume=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return float(np.median([r["images_per_s"] for r in rows[1:]] or [rows[-1]["images_per_s"]]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cifar", default="../shared/data/cifar10/cifar10-train.tar")
    p.add_argument("--images", type=int, default=1024, help="CIFAR images used")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--e2e", action="store_true", help="also time pretraining steps of the cifar10 preset")
    p.add_argument("--sets", default="cifar,500px,1600px")
    p.add_argument("--e2e-rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the loader measurements")
    args = p.parse_args()
    # The loader runs beside the model: PIL work is single-threaded, and on this shared 2-core VM torch's
    # OpenMP pool made the batched colour ops 20x slower with 2 threads than with 1 (spin-waiting cores).
    torch.set_num_threads(args.threads)
    cifar_aug = load_config("cifar10").aug
    swav96 = AugConfig(global_size=96, local_size=48, local_crops=4)
    plans = {
        "cifar": (lambda d: unpack_cifar(args.cifar, d, args.images), cifar_aug, 128, 6),
        "500px": (lambda d: generate_jpegs(d, 192, 500, 375), swav96, 32, 4),
        "1600px": (lambda d: generate_jpegs(d, 96, 1600, 1200), swav96, 32, 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name in args.sets.split(","):
            make, aug, batch, steps = plans[name]
            folder = make(Path(tmp) / name)
            write_shards(folder, Path(tmp) / f"{name}-shards", max_count=256, progress=False)
            shards = str(Path(tmp) / f"{name}-shards")
            crops = aug.global_crops + aug.local_crops
            results: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for k, v in source_rate(folder, shards, batch * steps).items():
                    results.setdefault(f"decode {k}", []).append(v)
                for kind in ("folder", "shards"):
                    for fast in (False, True):
                        rate = pipeline_rate(kind, fast, folder, shards, aug, batch, steps)
                        results.setdefault(f"{'fast' if fast else 'reference'} {kind}", []).append(rate)
            for key, values in results.items():
                med = statistics.median(values)
                rows.append((name, key, med, med * crops if not key.startswith("decode") else None, values))
        print("| data | variant | images/s | crops/s | rounds |")
        print("| --- | --- | --- | --- | --- |")
        for name, key, med, crops_s, values in rows:
            c = f"{crops_s:.0f}" if crops_s else "-"
            print(f"| {name} | {key} | {med:.0f} | {c} | {', '.join(f'{v:.0f}' for v in values)} |")
        if args.e2e:
            torch.set_num_threads(2)
            cfg = load_config("cifar10")
            folder = Path(tmp) / "cifar-shards"
            for r in range(args.e2e_rounds):
                model = model_only_rate(cfg, 8)
                ref = e2e_rate([], str(folder), Path(tmp) / f"ref{r}", 20)
                fast = e2e_rate(["data.augment=fast"], str(folder), Path(tmp) / f"fast{r}", 20)
                print(f"e2e round {r}: model-only {model:.0f} img/s, reference {ref:.0f}, fast {fast:.0f}")


if __name__ == "__main__":
    main()
