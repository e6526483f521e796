"""``openseer eval finetune ...``: fine-tune the whole backbone plus a new linear head on a class-balanced
fraction of the labels (SEER's semi-supervised protocol; `openseer.eval.finetune.finetune`)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, eval_settings, write_json
from openseer.eval.finetune import finetune
from openseer.weights.load import load_backbone


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune backbone + new head on a labelled fraction",
        parents=[parents.checkpoint, parents.pair, parents.settings_no_batch],
    )
    p.add_argument("--fraction", type=float, default=0.1, help="class-balanced share of train labels [0.1]")
    p.add_argument("--epochs", type=int, default=10, help="passes over the labelled subset [10]")
    p.add_argument("--lr-backbone", type=float, default=0.01, help="peak lr of the backbone (SGD, cosine) [0.01]")
    p.add_argument("--lr-head", type=float, default=0.1, help="peak lr of the new linear head [0.1]")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay [0]")
    # the training batch; test images are scored in batches of the run's eval.batch_size
    p.add_argument("--batch-size", dest="train_batch_size", type=int, default=64, help="images per step [64]")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset, order and augmentation [0]")
    p.add_argument("--out", help="also write the result JSON to this file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    backbone, config = load_backbone(args.checkpoint)
    result = finetune(
        backbone,
        config,
        args.train,
        args.test,
        fraction=args.fraction,
        epochs=args.epochs,
        lr_backbone=args.lr_backbone,
        lr_head=args.lr_head,
        weight_decay=args.weight_decay,
        batch_size=args.train_batch_size,
        seed=args.seed,
        settings=eval_settings(args),
    )
    result["checkpoint"] = str(args.checkpoint)
    print(f"fine-tune on {result['num_train']} labels: test top-1 {100 * result['top1']:.2f}%")
    write_json(result, args.out)
    return 0
