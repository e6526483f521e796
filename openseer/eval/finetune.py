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

import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from openseer.data import LabelledDataset, open_source, subset
from openseer.errors import DataError
from openseer.eval.knn import check_label_sets
from openseer.eval.linear import topk_accuracy
from openseer.eval.lowshot import class_balanced_subset
from openseer.eval.settings import FROM_RUN, EvalSettings
from openseer.models.backbone import feature_dim

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
    generator = torch.Generator().manual_seed(seed)
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
        generator=generator,
    )
    test_loader = DataLoader(
        LabelledDataset(test_src, run.transform()), batch_size=run.batch_size, num_workers=run.num_workers
    )
    dev = torch.device(run.device)
    torch.manual_seed(seed)
    model = Classifier(backbone, feature_dim(backbone), len(train_src.classes)).to(dev)
    optimizer = torch.optim.SGD(
        [
            {"params": model.backbone.parameters(), "lr": lr_backbone, "base_lr": lr_backbone},
            {"params": model.head.parameters(), "lr": lr_head, "base_lr": lr_head},
        ],
        momentum=0.9,
        nesterov=True,
        weight_decay=weight_decay,
    )
    total = max(1, epochs * len(train_loader))
    step, losses = 0, []
    for epoch in range(epochs):
        model.train()
        epoch_start, seen, first = time.perf_counter(), 0, len(losses)
        for images, y, ok in train_loader:
            ok = torch.as_tensor(ok, dtype=torch.bool)
            if ok.sum() < 2:  # BatchNorm needs two images; undecodable ones are dropped
                step += 1
                continue
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * 0.5 * (1.0 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(images[ok].to(dev)), torch.as_tensor(y)[ok].to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            seen += int(ok.sum())
            step += 1
        epoch_losses = losses[first:]
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
