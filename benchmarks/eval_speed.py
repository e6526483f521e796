"""Time the evaluations of 50,000 cached features (kNN and the linear-probe grid), independent of a model.

    PYTHONPATH=. .venv/bin/python benchmarks/eval_speed.py [--dim 440] [--threads 2]

Features are synthetic (10 Gaussian classes; 440 = regnety_004's feature width): the cost of these
evaluations depends only on the sizes, not on where the features came from.
"""

import argparse
import time

import torch

from openseer.eval.knn import knn_classify
from openseer.eval.linear import linear_probe


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=440)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, args.dim, generator=g)
    y, yt = torch.arange(50_000) % 10, torch.arange(10_000) % 10
    x = centres[y] * 0.3 + torch.randn(50_000, args.dim, generator=g)
    xt = centres[yt] * 0.3 + torch.randn(10_000, args.dim, generator=g)
    started = time.perf_counter()
    knn_classify(x, y, xt, yt, ks=(10, 20, 200))
    knn_s = time.perf_counter() - started
    started = time.perf_counter()
    result = linear_probe(x, y, xt, yt, 10, epochs=args.epochs)
    linear_s = time.perf_counter() - started
    print(
        f"50,000 train / 10,000 test features of dim {args.dim}, {args.threads} threads: kNN (k=10,20,200) "
        f"{knn_s:.1f} s; linear grid ({len(result['grid'])} heads, {args.epochs} epochs, + refit) "
        f"{linear_s:.1f} s"
    )


if __name__ == "__main__":
    main()
