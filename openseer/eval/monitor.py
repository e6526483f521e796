"""Online kNN monitoring during pretraining: representation quality in ``metrics.jsonl`` as the run goes.

DINO and dinov2 print a kNN accuracy while training; SwAV's loss alone says little about whether features
are improving (a collapsed run can have a low loss). `KnnMonitor` decodes a labelled train/test pair once
(class-balanced caps keep it cheap), and every ``every`` steps runs the backbone over those tensors in eval
mode and scores the weighted kNN (Wu et al. 2018; `openseer.eval.knn`). It uses no random numbers and
restores the backbone's train mode, so a monitored run trains exactly like an unmonitored one (BatchNorm
running statistics are not updated in eval mode).

It runs in the main process only, on the unwrapped backbone: fine for one process and DDP (replicated
weights); a sharded (FSDP) backbone would need every rank to take part and is not supported.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from openseer.data import LabelledDataset, eval_transform, open_source, subset
from openseer.errors import ConfigError, DataError
from openseer.eval.knn import check_label_sets, knn_classify
from openseer.eval.settings import FROM_RUN


def _balanced_first(labels: list[int], cap: int) -> list[int]:
    """Indices keeping about ``cap`` images in total, the same number per class, in listing order."""
    if cap <= 0 or cap >= len(labels):
        return list(range(len(labels)))
    per_class = max(1, cap // (max(labels) + 1))
    seen: dict[int, int] = {}
    keep = []
    for i, c in enumerate(labels):
        if seen.get(c, 0) < per_class:
            seen[c] = seen.get(c, 0) + 1
            keep.append(i)
    return keep


class KnnMonitor:
    """kNN top-1 of the current backbone on a fixed labelled pair, every ``every`` steps.

    Args:
        train, test: labelled ImageFolder folders or tars.
        image_size, crop_pct, mean, std: evaluation transform (as `openseer.data.eval_transform`).
        every: run when at least this many steps passed since the last run (and at the last step).
        k, temperature: kNN settings.
        max_train, max_test: class-balanced caps on the images used (0: all).
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        train: str,
        test: str,
        image_size: int,
        crop_pct: float,
        mean,
        std,
        every: int = 100,
        k: int = 20,
        temperature: float = 0.07,
        max_train: int = 5000,
        max_test: int = 1000,
        batch_size: int = 256,
    ) -> None:
        if every < 1:
            raise ConfigError(f"monitor every={every} must be >= 1")
        train_src, test_src = open_source(train, labelled=True), open_source(test, labelled=True)
        check_label_sets(train_src.classes, test_src.classes)
        transform = eval_transform(image_size, crop_pct, mean, std)
        tensors = []
        for src, cap in ((train_src, max_train), (test_src, max_test)):
            labels = [src.label(i) for i in range(len(src))]
            ds = LabelledDataset(subset(src, _balanced_first(labels, cap)), transform, image_size)
            items = [ds[i] for i in range(len(ds))]
            ok = [it for it in items if it[2]]
            if not ok:
                raise DataError(f"monitor data {src.root}: no decodable images")
            tensors.append((torch.stack([it[0] for it in ok]), torch.tensor([it[1] for it in ok])))
        (self.train_images, self.train_labels), (self.test_images, self.test_labels) = tensors
        self.num_classes = len(train_src.classes)
        self.every, self.k, self.temperature, self.batch_size = every, k, temperature, batch_size
        self.last_step: int | None = None

    @torch.no_grad()
    def _features(self, backbone: nn.Module, images: Tensor, device: torch.device) -> Tensor:
        out = []
        for start in range(0, len(images), self.batch_size):  # fp32: a monitor should not add noise
            out.append(backbone(images[start : start + self.batch_size].to(device)).float())
        return torch.cat(out)

    def evaluate(self, backbone: nn.Module) -> dict[str, Any]:
        """Score ``backbone`` now; returns ``{"monitor_knn_top1": ..., "monitor_seconds": ...}``."""
        started = time.perf_counter()
        device = next(backbone.parameters()).device
        was_training = backbone.training
        backbone.eval()
        try:
            train = self._features(backbone, self.train_images, device)
            test = self._features(backbone, self.test_images, device)
        finally:
            backbone.train(was_training)
        top1 = knn_classify(
            train,
            self.train_labels,
            test,
            self.test_labels,
            ks=(self.k,),
            temperature=self.temperature,
            num_classes=self.num_classes,
        )[self.k]
        return {"monitor_knn_top1": top1, "monitor_seconds": round(time.perf_counter() - started, 3)}

    def __call__(self, step: int, last: bool, backbone: nn.Module) -> dict[str, Any]:
        """The metrics to add to this step's row: a kNN result when due, else nothing."""
        due = last or self.last_step is None and step >= self.every
        due = due or (self.last_step is not None and step - self.last_step >= self.every)
        if not due:
            return {}
        self.last_step = step
        return self.evaluate(backbone)


def monitor_from_config(cfg) -> KnnMonitor | None:
    """The ``monitor`` section's monitor with the run's evaluation transform, or None when it is off."""
    m = cfg.monitor
    if not m.train:
        return None
    run = FROM_RUN.resolve(cfg)
    return KnnMonitor(
        m.train,
        m.test,
        run.image_size,
        run.crop_pct,
        run.mean,
        run.std,
        every=m.every,
        k=m.k,
        max_train=m.max_train,
        max_test=m.max_test,
        batch_size=run.batch_size,
    )
