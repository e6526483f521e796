"""Second image sets for tuning presets beyond CIFAR-10 (issue 23 item 7): tars of PNGs in class folders.

- Fashion-MNIST (Debian's ``dataset-fashion-mnist``: ``apt-get install dataset-fashion-mnist``): 28 px grey
  clothing, 10 classes, 60,000 train / 10,000 test, written as RGB PNGs;
- scikit-learn's digits: 8 px grey digits, 10 classes, 1,797 images, split 80/20 by a seeded shuffle.

- a 30-class mix of three domains (``--mix CIFAR_DIR``): seeded subsets of CIFAR-10 (15,000 train / 2,000 test,
  classes ``cifar-*``), Fashion-MNIST (15,000 / 2,000, ``fmnist-*``) and all of digits (``digits-*``): a pool whose
  class count a 10-class preset does not know.

    PYTHONPATH=. .venv/bin/python benchmarks/make_second_sets.py --out ../data   # fmnist-{train,test}.tar, digits-*
    PYTHONPATH=. .venv/bin/python benchmarks/make_second_sets.py --out ../data --mix ../shared/data/cifar10  # mix-*
"""

from __future__ import annotations

import argparse
import copy
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


def mix(out: Path, cifar: Path, per_set: dict[str, int]) -> None:
    """``mix-{split}.tar``: seeded subsets of three labelled tars, each class folder prefixed by its set."""
    for split in ("train", "test"):
        sources = {"cifar": cifar / f"cifar10-{split}.tar", "fmnist": out / f"fmnist-{split}.tar"}
        sources["digits"] = out / f"digits-{split}.tar"
        with tarfile.open(out / f"mix-{split}.tar", "w") as dst:
            count = 0
            for name, path in sources.items():
                with tarfile.open(path) as src:
                    members = [m for m in src.getmembers() if m.isfile()]
                    random.Random(0).shuffle(members)
                    limit = per_set.get(f"{name}-{split}", len(members))
                    for m in members[:limit]:
                        m2 = copy.copy(m)
                        m2.name = f"{name}-{m.name}"
                        dst.addfile(m2, src.extractfile(m))
                        count += 1
        print(f"{out / f'mix-{split}.tar'}: {count} images, 30 classes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--mix", default="", help="a folder with cifar10-{train,test}.tar: write mix-* from the sets")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.mix:
        sizes = {"cifar-train": 15000, "cifar-test": 2000, "fmnist-train": 15000, "fmnist-test": 2000}
        mix(out, Path(args.mix), sizes)
        return
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
