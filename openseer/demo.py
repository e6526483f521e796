"""``openseer demo``: the whole job on real images that ship with a pip dependency, in a few CPU minutes.

Data: scikit-learn's handwritten digits (Alpaydin & Kaynak 1998; 1,797 labelled 8x8 grayscale scans bundled
with ``sklearn.datasets.load_digits``, so nothing is downloaded). It is the only real, labelled image set that
installs with a common pip package and no network; torchvision's and tensorflow's sets all download.
The images are upscaled to 32 px and written as PNG folders (``<out>/data/{train,test}/<digit>/``), so the demo
uses exactly the code paths a user's own folder would: ``pretrain`` on the unlabeled train images, then
``eval knn`` for the pretrained backbone and for the same backbone at random initialisation (the floor of
``openseer eval all``, `openseer.eval.pipeline.random_init_backbone`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from openseer.config import load_config
from openseer.eval.knn import format_table
from openseer.eval.pipeline import knn_from_checkpoint, random_init_backbone
from openseer.io import atomic_write_json
from openseer.train import pretrain

log = logging.getLogger("openseer")

DEMO_PRESET = "demo"
IMAGE_SIDE = 32


def write_digits(root: Path, test_fraction: float = 0.3, seed: int = 0) -> tuple[Path, Path]:
    """Write the digits as ImageFolder PNGs; a stratified, seeded train/test split. Idempotent."""
    from sklearn.datasets import load_digits  # optional heavy dependency: only the demo needs it

    train_dir, test_dir = root / "train", root / "test"
    done = root / ".complete"
    if done.is_file():
        return train_dir, test_dir
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        for split, part in ((test_dir, idx[:n_test]), (train_dir, idx[n_test:])):
            folder = split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                pixels = (digits.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
                img = Image.fromarray(pixels, mode="L").resize((IMAGE_SIDE, IMAGE_SIDE), Image.BICUBIC)
                img.save(folder / f"{i:04d}.png")
    done.write_text("ok\n")
    return train_dir, test_dir


def run_demo(out: str | Path = "demo_out", max_steps: int = 0) -> dict[str, Any]:
    """Pretrain the ``demo`` preset on the digits, evaluate pretrained vs random init, write demo.json."""
    started = time.time()
    out = Path(out)
    train_dir, test_dir = write_digits(out / "data")
    overrides = [f"data.path={train_dir}"] + ([f"train.max_steps={max_steps}"] if max_steps else [])
    cfg = load_config(DEMO_PRESET, overrides)
    run_dir = out / "run"
    summary = pretrain(cfg, run_dir)
    ks = (10, 20)
    pretrained = knn_from_checkpoint(run_dir, train_dir, test_dir, ks=ks)
    random_init = knn_from_checkpoint(random_init_backbone(run_dir, out), train_dir, test_dir, ks=ks)
    top = {name: max(r["top1"].values()) for name, r in (("pretrained", pretrained), ("random", random_init))}
    result = {
        "knn_top1_pretrained": top["pretrained"],
        "knn_top1_random": top["random"],
        "knn_pretrained": pretrained["top1"],
        "knn_random": random_init["top1"],
        "pretrain_final_loss": summary["final_loss_mean"],
        "uniform_loss": summary["uniform_loss"],
        "pretrain_steps": summary["steps"],
        "seconds": time.time() - started,
        "run_dir": str(run_dir),
    }
    atomic_write_json(out / "demo.json", result)
    print(format_table({int(k): v for k, v in pretrained["top1"].items()}, "kNN top-1, SwAV-pretrained"))
    print(format_table({int(k): v for k, v in random_init["top1"].items()}, "kNN top-1, random init"))
    verdict = "beats" if top["pretrained"] > top["random"] else "does NOT beat"
    print(
        f"pretrained {top['pretrained']:.1%} {verdict} random init {top['random']:.1%} "
        f"({result['seconds']:.0f} s); written {out / 'demo.json'}"
    )
    return result
