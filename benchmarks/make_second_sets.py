"""Second image sets for tuning presets beyond CIFAR-10 (issue 23 item 7): tars of PNGs in class folders.

- Fashion-MNIST (Debian's ``dataset-fashion-mnist``: ``apt-get install dataset-fashion-mnist``): 28 px grey
  clothing, 10 classes, 60,000 train / 10,000 test, written as RGB PNGs;
- scikit-learn's digits: 8 px grey digits, 10 classes, 1,797 images, split 80/20 by a seeded shuffle.

    PYTHONPATH=. .venv/bin/python benchmarks/make_second_sets.py --out ../data   # fmnist-{train,test}.tar, digits-*
"""

from __future__ import annotations

import argparse
import gzip
import io
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian dims after a 4-byte magic whose last byte is the rank."""
    raw = gzip.decompress(path.read_bytes())
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def write_tar(dst: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    with tarfile.open(dst, "w") as out:
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            buf = io.BytesIO()
            Image.fromarray(img).convert("RGB").save(buf, "PNG")
            info = tarfile.TarInfo(f"{classes[int(label)]}/{i:06d}.png")
            info.size = buf.tell()
            buf.seek(0)
            out.addfile(info, buf)
    print(f"{dst}: {len(images)} images, {len(set(labels.tolist()))} classes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if FMNIST.is_dir():
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")
            labels = read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
            write_tar(out / f"fmnist-{split}.tar", images, labels, FMNIST_CLASSES)
    else:
        print(f"{FMNIST} is absent: apt-get install dataset-fashion-mnist")
    from sklearn.datasets import load_digits  # optional: only this set needs scikit-learn

    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    order = list(range(len(images)))
    random.Random(0).shuffle(order)
    cut = int(0.8 * len(order))
    names = [str(d) for d in range(10)]
    for split, idx in (("train", order[:cut]), ("test", order[cut:])):
        write_tar(out / f"digits-{split}.tar", images[idx], digits.target[idx], names)


if __name__ == "__main__":
    main()
