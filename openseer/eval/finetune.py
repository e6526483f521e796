"""Semi-supervised fine-tuning: the whole pretrained backbone plus a new linear head on a fraction of labels.

This is SEER's low-shot protocol (Goyal et al. 2021, Sec. 4.2, after SimCLR v2 / Chen et al. 2020): start
from the pretrained trunk, attach a randomly initialised linear classifier, and train both on 1% or 10% of
the labelled images for a few epochs with light augmentation (random resized crop and horizontal flip), the
head with a larger learning rate than the backbone (a freshly initialised head needs large steps, the
pretrained features small ones). SGD with Nesterov momentum and a cosine schedule; test top-1/top-5 with the
evaluation transform at the end. The labelled subset is drawn class-balanced and seeded, as for the
low-shot probes (`openseer.eval.lowshot.class_balanced_subset`).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from openseer.data import ImageSource, LabelledDataset, open_source, subset
from openseer.errors import DataError
from openseer.eval.knn import check_label_sets
from openseer.eval.linear import topk_accuracy
from openseer.eval.lowshot import class_balanced_subset
from openseer.eval.registry import Evaluation, Row, SuiteRole, pct, register_evaluation
from openseer.eval.settings import FROM_RUN, EvalSettings, ResolvedEval
from openseer.models.backbone import feature_dim
from openseer.ops.schedules import cosine_schedule

log = logging.getLogger("openseer")


def light_augmentation(image_size: int, mean, std, min_scale: float = 0.35):
    """Random resized crop (scale [min_scale, 1]) + horizontal flip + normalisation."""
    return v2.Compose(
        [
            v2.RGB(),
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class Classifier(nn.Module):
    """Backbone followed by a linear head (zero-initialised bias, small random weights)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[dict[int, float], int]:
    model.eval()
    logits, labels = [], []
    for images, y, ok in loader:
        ok = torch.as_tensor(ok, dtype=torch.bool)
        if ok.any():
            logits.append(model(images[ok].to(device)).float().cpu())
            labels.append(torch.as_tensor(y)[ok])
    if not logits:
        raise DataError("no decodable test images")
    return topk_accuracy(torch.cat(logits), torch.cat(labels), (1, 5)), sum(len(y) for y in labels)


def _loaders(
    train_src: ImageSource, test_src: ImageSource, chosen: torch.Tensor, run: ResolvedEval, batch_size: int, seed: int
) -> tuple[DataLoader, DataLoader]:
    """The shuffled, augmented loader of the labelled subset and the test loader (evaluation transform)."""
    train_loader = DataLoader(
        LabelledDataset(
            subset(train_src, chosen),
            light_augmentation(run.image_size, run.mean, run.std),
            run.image_size,
        ),
        batch_size=min(batch_size, len(chosen)),
        shuffle=True,
        drop_last=len(chosen) > batch_size,  # no 1-image BatchNorm batch at an epoch's end
        num_workers=run.num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    test_loader = DataLoader(
        LabelledDataset(test_src, run.transform()), batch_size=run.batch_size, num_workers=run.num_workers
    )
    return train_loader, test_loader


def _optimizer(model: Classifier, lr_backbone: float, lr_head: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum; each group keeps its peak lr as ``base_lr`` for the cosine schedule."""
    return torch.optim.SGD(
        [
            {"params": model.backbone.parameters(), "lr": lr_backbone, "base_lr": lr_backbone},
            {"params": model.head.parameters(), "lr": lr_head, "base_lr": lr_head},
        ],
        momentum=0.9,
        nesterov=True,
        weight_decay=weight_decay,
    )


def _train_epoch(
    model: Classifier, loader: DataLoader, optimizer: torch.optim.SGD, scales: list[float], step: int, dev
) -> tuple[int, list[float], int]:
    """One pass over ``loader``; step i runs at ``base_lr * scales[i]``. Returns (next step, losses, images)."""
    model.train()
    losses, seen = [], 0
    for images, y, ok in loader:
        ok = torch.as_tensor(ok, dtype=torch.bool)
        if ok.sum() < 2:  # BatchNorm needs two images; undecodable ones are dropped
            step += 1
            continue
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scales[step]
        loss = F.cross_entropy(model(images[ok].to(dev)), torch.as_tensor(y)[ok].to(dev))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        seen += int(ok.sum())
        step += 1
    return step, losses, seen


def finetune(
    backbone: nn.Module,
    config: dict[str, Any],
    train: str,
    test: str,
    fraction: float = 0.1,
    epochs: int = 10,
    lr_backbone: float = 0.01,
    lr_head: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    settings: EvalSettings = FROM_RUN,
) -> dict[str, Any]:
    """Fine-tune ``backbone`` with a new head on a class-balanced ``fraction`` of ``train``; score ``test``.

    ``batch_size`` is the training batch; ``settings`` give the image size, crop, test batch size, workers and
    device (`openseer.eval.settings.EvalSettings`; what is left at 0/auto comes from the run's ``config``).

    Returns:
        JSON-able dict with ``top1``, ``top5``, the subset size, the settings and ``seconds``.
    """
    started = time.perf_counter()
    train_src, test_src = open_source(train, labelled=True), open_source(test, labelled=True)
    check_label_sets(train_src.classes, test_src.classes)
    run = settings.resolve(config)
    labels = torch.tensor([train_src.label(i) for i in range(len(train_src))])
    chosen = class_balanced_subset(labels, fraction, seed)
    train_loader, test_loader = _loaders(train_src, test_src, chosen, run, batch_size, seed)
    dev = torch.device(run.device)
    torch.manual_seed(seed)
    model = Classifier(backbone, feature_dim(backbone), len(train_src.classes)).to(dev)
    optimizer = _optimizer(model, lr_backbone, lr_head, weight_decay)
    scales = cosine_schedule(1.0, 0.0, max(1, epochs * len(train_loader))).tolist()  # cosine decay to 0
    step, losses = 0, []
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        step, epoch_losses, seen = _train_epoch(model, train_loader, optimizer, scales, step, dev)
        losses += epoch_losses
        log.info(
            "finetune epoch %d/%d: loss %.3f, %.0f images/s",
            epoch + 1,
            epochs,
            sum(epoch_losses) / max(len(epoch_losses), 1),
            seen / max(time.perf_counter() - epoch_start, 1e-9),
        )
    acc, num_test = _evaluate(model, test_loader, dev)
    return {
        "eval": "finetune",
        "top1": acc[1],
        "top5": acc[5],
        "fraction": fraction,
        "seed": seed,
        "num_train": len(chosen),
        "num_test": num_test,
        "epochs": epochs,
        "lr_backbone": lr_backbone,
        "lr_head": lr_head,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "final_train_loss": losses[-1] if losses else None,
        "image_size": run.image_size,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fraction", type=float, default=0.1, help="class-balanced share of train labels [0.1]")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the labelled subset [10]")
    parser.add_argument("--lr-backbone", type=float, default=0.01, help="peak lr of the backbone (SGD, cosine) [0.01]")
    parser.add_argument("--lr-head", type=float, default=0.1, help="peak lr of the new linear head [0.1]")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay [0]")
    # the training batch; test images are scored in batches of the run's eval.batch_size
    parser.add_argument("--batch-size", dest="train_batch_size", type=int, default=64, help="images per step [64]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset, order and augmentation [0]")


def _from_args(args: argparse.Namespace) -> dict[str, Any]:
    names = ("fraction", "epochs", "lr_backbone", "lr_head", "weight_decay", "seed")
    return {**{name: getattr(args, name) for name in names}, "batch_size": args.train_batch_size}


def _report_rows(result: dict[str, Any]) -> list[Row]:
    return [(f"fine-tune {result['fraction']:.0%}", f"{result['epochs']} epochs", f"{100 * result['top1']:.2f}")]


def _add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--finetune",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="also fine-tune on this label fraction, e.g. 0.1 [0: skip, the slow one]",
    )
    parser.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs [10]")


def _suite_options(params: dict[str, Any], out_dir: Path, candidate: str) -> dict[str, Any] | None:
    if params["finetune_fraction"] <= 0:
        return None
    return {"fraction": params["finetune_fraction"], "epochs": params["finetune_epochs"]}


def _suite_header(params: dict[str, Any]) -> list[str]:
    return [f"fine-tune {params['finetune_fraction']:.0%}"] if params["finetune_fraction"] > 0 else []


def _suite_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"finetune_fraction": args.finetune, "finetune_epochs": args.finetune_epochs}


def _describe(result: dict[str, Any]) -> str:
    return f"fine-tune on {result['num_train']} labels: test top-1 {100 * result['top1']:.2f}%"


DEFAULTS = {"finetune_fraction": 0.0, "finetune_epochs": 10}
SUITE = SuiteRole(
    _suite_options, _suite_header, lambda r, params: [pct(r["top1"])], DEFAULTS, _add_suite_arguments, _suite_from_args
)
HELP = "fine-tune backbone + new head on a labelled fraction"
# frozen=False: it trains a backbone of its own, not a probe on frozen features
ENTRY = register_evaluation(
    Evaluation("finetune", HELP, finetune, _describe, _report_rows, _add_arguments, _from_args, False, SUITE)
)
