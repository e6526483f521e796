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

from openseer.eval.linear import topk_accuracy
from openseer.eval.lowshot import class_balanced_subset

log = logging.getLogger("openseer")

def light_augmentation(image_size: int, mean, std, min_scale: float = 0.35):
    """Random resized crop (scale [min_scale, 1]) + horizontal flip + normalisation."""
    from torchvision.transforms import v2

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
        from openseer.data import DataError

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
    image_size: int = 0,
    crop_pct: float = 0.0,
    num_workers: int = -1,
    device: str = "auto",
) -> dict[str, Any]:
    """Fine-tune ``backbone`` with a new head on a class-balanced ``fraction`` of ``train``; score ``test``.

    Returns:
        JSON-able dict with ``top1``, ``top5``, the subset size, the settings and ``seconds``.
    """
    from openseer.data import LabelledDataset, auto_num_workers, eval_transform, open_source, subset
    from openseer.eval.knn import check_label_sets
    from openseer.eval.run import eval_settings, pick_device
    from openseer.models.backbone import feature_dim

    started = time.perf_counter()
    train_src, test_src = open_source(train, labelled=True), open_source(test, labelled=True)
    check_label_sets(train_src.classes, test_src.classes)
    s = eval_settings(config or {}, image_size, crop_pct)
    labels = torch.tensor([train_src.label(i) for i in range(len(train_src))])
    chosen = class_balanced_subset(labels, fraction, seed)
    workers = auto_num_workers(num_workers)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        LabelledDataset(
            subset(train_src, chosen),
            light_augmentation(s["image_size"], s["mean"], s["std"]),
            s["image_size"],
        ),
        batch_size=min(batch_size, len(chosen)),
        shuffle=True,
        drop_last=len(chosen) > batch_size,  # no 1-image BatchNorm batch at an epoch's end
        num_workers=workers,
        generator=generator,
    )
    eval_tf = eval_transform(s["image_size"], s["crop_pct"], s["mean"], s["std"])
    test_loader = DataLoader(LabelledDataset(test_src, eval_tf), batch_size=256, num_workers=workers)
    dev = torch.device(pick_device(device))
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
        "image_size": s["image_size"],
        "seconds": round(time.perf_counter() - started, 3),
    }
