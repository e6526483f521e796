"""Label-free health signals of a run, collapse warnings and the best label-free step ("Is it learning?").

:class:`HealthMonitor` follows :class:`openseer.eval.monitor.KnnMonitor`: a fixed, seeded subset of the
pretraining pool (no labels) is decoded once with the evaluation transform; when a metrics row is written and a
multiple of ``train.health_every`` steps has passed, the exported backbone embeds it in eval mode (float32, no
random numbers, train mode restored: the run trains exactly as without it) and the row gets

- ``health_rankme``: RankMe of the features (Garrido et al. 2023), 1 = collapsed, up to min(N, D);
- ``health_alpha_req``: alpha-ReQ, the eigenspectrum decay (Agrawal et al. 2022);
- ``health_feature_std``: the std of the l2-normalised features (SimSiam sec. 4.1), 0 = collapsed;

and, from the same forward, the method's output embedding (:meth:`~openseer.methods.base.Method.head_embed`: a
projector's z, SwAV's unit projection, DINO's teacher bottleneck) when it has one: ``health_head_rankme``,
``health_head_alpha_req``, ``health_head_std``; then whatever the method adds from those embeddings
(:meth:`~openseer.methods.base.Method.probe_signals`: SwAV's and DeepCluster-v2's ``health_code_entropy`` and
``health_code_occupancy``). The monitor knows no method: it calls the contract.

The method's own signature (``z_std``, DINO's ``kl``, SwAV's ``occupancy``, ...) is already in every row: the
method logs it from its training batches. :class:`CollapseWatch` reads each row against the method's
:meth:`~openseer.methods.base.Method.collapse_signals` and warns once per signal when it stays past its line
for ``WINDOW`` rows in a row after the lr warm-up; it also tracks the best label-free step: the highest backbone
RankMe, which Garrido et al. show ranks checkpoints *of one method* by downstream accuracy (not across methods).

Like the kNN monitor, it runs on rank 0 on the unwrapped backbone and method: an FSDP-sharded one is not supported.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

import torch
from torch import Tensor, nn

from openseer.data import LabelledDataset, eval_transform, is_shard_spec, open_source, subset
from openseer.errors import ConfigError, DataError
from openseer.eval.settings import FROM_RUN
from openseer.methods.base import CollapseSignal, Method
from openseer.ops.collapse import alpha_req, embedding_std, rankme

log = logging.getLogger("openseer")

DEFAULT_PROBE = 2000  # most probe images when train.health_images = 0
MIN_PROBE = 256  # fewest (or the whole pool if smaller)
POOL_SHARE = 20  # auto probe = pool / 20: a quarter-epoch cadence then costs ~2-3% (BENCHMARKS.md)
WINDOW = 3  # consecutive rows past a collapse line before the warning
BEST_SIGNAL = "health_rankme"


class HealthMonitor:
    """Health signals of the backbone on a fixed probe set of pool images, at most every ``every`` steps.

    Args:
        pool: the pretraining images (``data.path``; folders, tars, file lists).
        images: probe size; 0 = :func:`auto_probe_size`. More than the pool holds raises :class:`ConfigError`.
        image_size, crop_pct, mean, std: the evaluation transform (`openseer.data.eval_transform`).
        every: steps between checks; a check runs at the first row at or past each multiple (and the last).
        log_every: the metrics row cadence (rows are written at its multiples).
        batch_size: images per forward pass. seed: picks the probe images.
        method: the run's (unwrapped) method, whose output embedding and probe signals join the backbone's; None:
            the backbone's only.
    """

    def __init__(
        self,
        pool: str,
        images: int,
        image_size: int,
        crop_pct: float,
        mean,
        std,
        every: int,
        log_every: int,
        batch_size: int = 256,
        seed: int = 0,
        method: Method | None = None,
    ) -> None:
        source = open_source(pool)
        if images > len(source):
            raise ConfigError(
                f"train.health_images={images} is more than the pool holds ({len(source)} images in {pool}); "
                f"use at most {len(source)}, or 0 (auto)"
            )
        count = images or auto_probe_size(len(source))
        chosen = sorted(random.Random(seed).sample(range(len(source)), count))
        ds = LabelledDataset(subset(source, chosen), eval_transform(image_size, crop_pct, mean, std), image_size)
        items = [ds[i] for i in range(len(ds))]
        ok = [it[0] for it in items if it[2]]
        if len(ok) < 2:
            raise DataError(f"health probe of {pool}: fewer than 2 decodable images")
        self.images = torch.stack(ok)
        self.every, self.log_every, self.batch_size = every, log_every, batch_size
        self.method = method
        self.seconds, self.checks = 0.0, 0

    @torch.no_grad()
    def embed(self, backbone: nn.Module, method: Method | None = None) -> tuple[Tensor, Tensor | None]:
        """The probe set through ``backbone`` and, batch by batch from the same features, ``method.head_embed``:
        (features, head embeddings or None), float32 on the CPU. Eval mode; every module's mode is restored."""
        device = next(backbone.parameters()).device
        modules = {*backbone.modules(), *(method.modules() if method is not None else ())}
        modes = [(m, m.training) for m in modules]
        for m in modules:
            m.training = False  # eval(): BatchNorm running statistics, no dropout
        feats, heads = [], []
        try:
            for i in range(0, len(self.images), self.batch_size):
                x = self.images[i : i + self.batch_size].to(device)
                f = backbone(x)
                feats.append(f.float().cpu())
                z = method.head_embed(x, f) if method is not None else None
                if z is not None:
                    heads.append(z.float().cpu())
        finally:
            for m, training in modes:
                m.training = training
        return torch.cat(feats), torch.cat(heads) if heads else None

    def features(self, backbone: nn.Module) -> Tensor:
        """The probe set through ``backbone`` in eval mode (float32); train mode is restored."""
        return self.embed(backbone)[0]

    def evaluate(self, backbone: nn.Module, method: Method | None = None) -> dict[str, float]:
        """RankMe, alpha-ReQ and normalised-feature std of the backbone on the probe set now; with a ``method``
        whose :meth:`~openseer.methods.base.Method.head_embed` gives an embedding, the same of it
        (``health_head_*``) and the method's :meth:`~openseer.methods.base.Method.probe_signals`."""
        started = time.perf_counter()
        f, z = self.embed(backbone, method)
        row = {
            "health_rankme": rankme(f),
            "health_alpha_req": alpha_req(f),
            "health_feature_std": float(embedding_std(f)),
        }
        if z is not None:
            row["health_head_rankme"] = rankme(z)
            row["health_head_alpha_req"] = alpha_req(z)
            row["health_head_std"] = float(embedding_std(z))
            with torch.no_grad():
                row.update(method.probe_signals(z))
        self.seconds += time.perf_counter() - started
        self.checks += 1
        return row

    def due(self, step: int, last: bool) -> bool:
        """A multiple of ``every`` lies in (previous row, step]: depends on the step only (same after a resume)."""
        return last or step // self.every != max(step - self.log_every, 0) // self.every

    def __call__(self, step: int, last: bool, backbone: nn.Module) -> dict[str, Any]:
        return self.evaluate(backbone, self.method) if self.due(step, last) else {}


def auto_probe_size(pool: int) -> int:
    """Probe images for ``train.health_images=0``: pool/20 within [256, 2000] (the whole pool if under 256).

    Embedding the probe costs about one eval forward per image; a quarter epoch of training costs ~pool/4 x
    (crops x ~3 for forward + backward) image forwards, so pool/20 probe images every quarter epoch stay at a
    few percent of the run whatever the pool's size (measured: BENCHMARKS.md "Health signals")."""
    return min(pool, max(MIN_PROBE, min(DEFAULT_PROBE, pool // POOL_SHARE)))


def health_every(cfg: Any, steps_per_epoch: int) -> int:
    """``train.health_every`` resolved: -1 -> a quarter epoch rounded up to a multiple of ``log_every``."""
    every, log_every = cfg.train.health_every, cfg.train.log_every
    if every != -1:
        return every
    return max(1, math.ceil(steps_per_epoch / 4 / log_every)) * log_every


def health_from_config(
    cfg: Any, steps_per_epoch: int, sharded_fsdp: bool, method: Method | None = None
) -> HealthMonitor | None:
    """The run's health monitor, or None when off (``health_every=0``; by default also for streamed shards
    and FSDP-sharded backbones, with a log line; asked for explicitly there, it is an error). ``method``: the
    unwrapped method whose output embedding and probe signals are measured too."""
    every = health_every(cfg, steps_per_epoch)
    if every == 0:
        return None
    auto = cfg.train.health_every == -1
    if sharded_fsdp:
        if auto:
            log.info("health signals off: they run on rank 0 and cannot see an FSDP-sharded backbone")
            return None
        raise ConfigError("train.health_every runs on rank 0 and cannot see an FSDP-sharded backbone; set it to 0")
    if auto and is_shard_spec(cfg.data.path):
        log.info("health signals off for a streamed shard set (set train.health_every to read a probe set)")
        return None
    run = FROM_RUN.resolve(cfg)
    return HealthMonitor(
        cfg.data.path,
        cfg.train.health_images,
        run.image_size,
        run.crop_pct,
        run.mean,
        run.std,
        every=every,
        log_every=cfg.train.log_every,
        batch_size=run.batch_size,
        seed=cfg.train.seed,
        method=method,
    )


def new_health_state() -> dict[str, Any]:
    """What :class:`CollapseWatch` keeps between rows; it travels in the checkpoint (``Progress.health``)."""
    return {"runs": {}, "warnings": [], "best": None}


class CollapseWatch:
    """Reads every metrics row: collapse warnings (once per signal) and the best label-free step.

    Args:
        signals: the method's :meth:`~openseer.methods.base.Method.collapse_signals`.
        start_step: rows up to this step are not judged (the lr warm-up, when losses and stds move fast).
        stop: request a stop when a warning fires (``train.stop_on_collapse``).
        state: :func:`new_health_state` (or a checkpoint's), updated in place.
    """

    def __init__(self, signals: tuple[CollapseSignal, ...], start_step: int, stop: bool, state: dict[str, Any]):
        self.signals, self.start_step, self.stop = signals, start_step, stop
        self.state = state
        self.stop_requested = False
        self.new_best = False  # set by the last row that improved the best label-free score

    def observe(self, row: dict[str, Any]) -> None:
        """Judge one metrics row (its step, method scalars, loss and health signals)."""
        step, runs = row["step"], self.state["runs"]
        self.new_best = False
        best, score = self.state["best"], row.get(BEST_SIGNAL)
        if score is not None and math.isfinite(score) and (best is None or score > best["score"]):
            self.state["best"] = {"step": step, "score": score, "signal": BEST_SIGNAL}
            self.new_best = True
        if step <= self.start_step:
            return
        warned = {w["signal"] for w in self.state["warnings"]}
        for s in self.signals:
            value = row.get(s.name)
            if value is None or s.name in warned:
                continue
            runs[s.name] = runs.get(s.name, 0) + 1 if s.crossed(value) else 0
            if runs[s.name] >= WINDOW:
                self._warn(s, step, value)

    def _warn(self, s: CollapseSignal, step: int, value: float) -> None:
        self.state["warnings"].append(
            {"signal": s.name, "step": step, "value": value, "line": s.line, "direction": s.direction,
             "remedy": s.remedy}
        )  # fmt: skip
        log.warning(
            "collapse? %s=%.4g has stayed %s %.4g for %d rows (step %d): %s%s",
            s.name, value, s.direction, s.line, WINDOW, step, s.remedy,
            " - stopping (train.stop_on_collapse)" if self.stop else "",
        )  # fmt: skip
        self.stop_requested = self.stop_requested or self.stop

    def summary(self, monitor: HealthMonitor | None) -> dict[str, Any]:
        """``summary.json`` entries: collapse_warnings, best_label_free and the health signals' cost (checks
        and seconds of this segment of the run)."""
        cost = (
            dict(checks=monitor.checks, seconds=round(monitor.seconds, 3), images=len(monitor.images))
            if monitor
            else None
        )
        return {
            "collapse_warnings": list(self.state["warnings"]),
            "best_label_free": self.state["best"],
            "health": cost,
        }
