"""Time the weighted kNN classifier at ImageNet-subset scale.

Usage: python benchmarks/knn_speed.py [--train 50000] [--test 10000] [--dim 512] [--device cpu]

Random features and 1000 classes, ks (10, 20, 200), the defaults of `openseer eval knn`. Prints seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

from openseer.eval import knn_classify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    train = torch.randn(args.train, args.dim, generator=generator).to(args.device)
    test = torch.randn(args.test, args.dim, generator=generator).to(args.device)
    train_labels = torch.randint(args.classes, (args.train,), generator=generator)
    test_labels = torch.randint(args.classes, (args.test,), generator=generator)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = knn_classify(train, train_labels, test, test_labels, num_classes=args.classes, chunk_size=args.chunk_size)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(
        f"knn_classify train={args.train} test={args.test} dim={args.dim} ks=(10, 20, 200) "
        f"device={args.device} threads={torch.get_num_threads()}: {seconds:.2f} s "
        f"(top-1 {results[20]:.4f}, chance {1 / args.classes:.4f})"
    )


if __name__ == "__main__":
    main()
