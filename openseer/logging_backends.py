"""Metric sinks: the scalars of metrics.jsonl (and the report's pictures) mirrored to TensorBoard or W&B.

Both are optional extras, off by default (``log.tensorboard=true``, ``log.wandb=PROJECT``; ``pip install
openseer[tensorboard]`` / ``openseer[wandb]``). The training loop's logger calls one :class:`MetricsSink` on the
main process, built by :func:`sink_from_config`:

* ``log(step, scalars)`` after it writes a metrics.jsonl row (loss, lr, images/s ... and the monitor's kNN);
* ``log_image(tag, path, step)`` for PNGs (``log_images(sink, folder, step)`` sends a report's pictures);
* ``close()`` when the run ends.

Non-numeric and missing values (e.g. the loss of a window of skipped steps, ``None``) are left out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from openseer.config import Config, ConfigError, to_dict


class MetricsSink(Protocol):
    def log(self, step: int, scalars: dict[str, Any]) -> None: ...

    def log_image(self, tag: str, path: str | Path, step: int) -> None: ...

    def close(self) -> None: ...


def numeric(scalars: dict[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers among ``scalars`` (bools and None dropped; 0-d tensors converted)."""
    out = {}
    for key, value in scalars.items():
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or key == "step":
            continue
        out[key] = float(value)
    return out


class NullSink:
    """Nothing configured: every call is a no-op."""

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        pass

    def log_image(self, tag: str, path: str | Path, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardSink:
    """``torch.utils.tensorboard.SummaryWriter`` into ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "log.tensorboard=true needs the tensorboard package: pip install 'openseer[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        for key, value in numeric(scalars).items():
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_image(self, tag: str, path: str | Path, step: int) -> None:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        self.writer.add_image(tag, array, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run (project from ``log.wandb``), resumed under the same id when the run resumes."""

    def __init__(self, project: str, run_dir: str | Path, config: dict[str, Any] | None = None):
        try:
            import wandb
        except ImportError:
            raise ConfigError(f"log.wandb={project} needs the wandb package: pip install 'openseer[wandb]'") from None
        self.wandb = wandb
        run_dir = Path(run_dir)
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=project, id=run_id, name=run_dir.name, dir=str(run_dir), config=config, resume="allow"
        )

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        self.run.log(numeric(scalars), step=step)

    def log_image(self, tag: str, path: str | Path, step: int) -> None:
        self.run.log({tag: self.wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()


class MultiSink:
    """Several sinks as one."""

    def __init__(self, sinks: list[MetricsSink]):
        self.sinks = sinks

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        for s in self.sinks:
            s.log(step, scalars)

    def log_image(self, tag: str, path: str | Path, step: int) -> None:
        for s in self.sinks:
            s.log_image(tag, path, step)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def sink_from_config(cfg: Config, run_dir: str | Path, is_main: bool = True) -> MetricsSink:
    """The sinks ``cfg.log`` asks for (a :class:`NullSink` when none, and on every process but the main one)."""
    if not is_main:
        return NullSink()
    sinks: list[MetricsSink] = []
    if cfg.log.tensorboard:
        sinks.append(TensorBoardSink(Path(run_dir) / "tensorboard"))
    if cfg.log.wandb:
        sinks.append(WandbSink(cfg.log.wandb, run_dir, to_dict(cfg)))
    if not sinks:
        return NullSink()
    return sinks[0] if len(sinks) == 1 else MultiSink(sinks)


def log_images(sink: MetricsSink, folder: str | Path, step: int, prefix: str = "report") -> int:
    """Send every PNG of ``folder`` (e.g. a report's curves, neighbours, prototypes) as ``prefix/<name>``."""
    paths = sorted(Path(folder).glob("*.png"))
    for path in paths:
        sink.log_image(f"{prefix}/{path.stem}", path, step)
    return len(paths)
