"""Pretraining: :func:`pretrain` runs a config into a run directory.

The loop is in parts: :mod:`~openseer.train.setup` builds everything, :mod:`~openseer.train.step` holds
:func:`train_step` (one optimizer step, callable on its own), :mod:`~openseer.train.logger` writes
metrics.jsonl and the progress bar, :mod:`~openseer.train.checkpointer` saves and restores, and
:mod:`~openseer.train.loop` ties them together; :mod:`~openseer.train.budget` turns a wall-clock budget
(``train.minutes``) into steps. See docs/architecture.md.
"""

from openseer.train.checkpointer import Checkpointer, Progress
from openseer.train.loop import pretrain
from openseer.train.setup import Run, build_optimizer, build_trainer, setup_run
from openseer.train.step import StepResult, Trainer, TrainingError, apply_schedules, group_lr, train_step

__all__ = [
    "Checkpointer",
    "Progress",
    "Run",
    "StepResult",
    "Trainer",
    "TrainingError",
    "apply_schedules",
    "build_optimizer",
    "build_trainer",
    "group_lr",
    "pretrain",
    "setup_run",
    "train_step",
]
