"""The options of ``openseer curate`` / ``openseer.curate(...)``: one typed dataclass, one help text per field.

Curation is a command, not a training experiment, so its options live here beside the code that reads them
rather than in `openseer.config` (which describes pretraining runs); they are checked the same way: a wrong
value is one `ConfigError` line naming what is valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from openseer.errors import ConfigError

#: Cosine similarity above which two pool images are near duplicates. Measured (BENCHMARKS.md "Curation") with
#: a VICReg regnety_004 pretrained 1000 steps on CIFAR-10 images: 0.99 is where the removals turn mostly right
#: (precision 0.80; recall 0.84 of 20-px resizes, 0.48 of JPEG q15, 0.35 of 85% crops, 0.16-0.20 of colour
#: shifts and flips; byte-identical copies always, by hash). Lower thresholds join more copies but chain unrelated
#: look-alikes (0.95: precision 0.36): a backbone trained for invariance is a weak copy detector. Thresholds
#: depend on the model: measure yours with benchmarks/curate_quality.py.
DEFAULT_DEDUP_THRESHOLD = 0.99
#: A pool image against an evaluation image: a little stricter (lower) than dedup, since a missed leak inflates
#: every reported number (measured with the same model: 87 of 100 planted leaks found, 6% false removals).
DEFAULT_LEAKAGE_THRESHOLD = 0.985


def _f(default, help_text: str, **kw):
    return field(default=default, metadata={"help": help_text}, **kw)


@dataclass
class CurateOptions:
    """What ``openseer curate`` does besides its inputs (docs/curation.md explains each stage)."""

    target: int = _f(0, "images to keep after balanced sampling; 0 keeps every deduplicated, leakage-free image")
    dedup_threshold: float = _f(
        DEFAULT_DEDUP_THRESHOLD, "cosine above which two pool images are near duplicates (higher: fewer removed)"
    )
    leakage_threshold: float = _f(
        DEFAULT_LEAKAGE_THRESHOLD, "cosine above which a pool image copies an evaluation image (keep it <= dedup)"
    )
    neighbours: int = _f(16, "k of the kNN graph: each image is joined to at most this many near duplicates")
    index: str = _f("auto", "kNN index: auto (exact flat up to 200k images, IVF above), flat, ivf, torch")
    nprobe: int = _f(32, "IVF lists probed per query (more: closer to exact, slower)")
    levels: tuple[int, ...] = _f((), "clusters per k-means level, finest first, e.g. 1000,100,10 [from the pool size]")
    resample_steps: int = _f(10, "resampling-clustering steps per level (Vo et al. 2024); 0: plain k-means")
    sample_sizes: tuple[int, ...] = _f((), "points per cluster in a resampling step, per level [half the mean size]")
    kmeans_iters: int = _f(20, "Lloyd iterations per k-means")
    strategy: str = _f("random", "images drawn inside a finest cluster: random, or closest (to the centroid)")
    dtype: str = _f("float16", "embedding file dtype: float16 (half the disk) or float32")
    chunk: int = _f(4096, "images per embedding chunk (the unit of resumption and of the torchrun split)")
    layer: str = _f("pooled", "backbone layer embedded: pooled or a stage name/index")
    seed: int = _f(0, "seed of k-means and of sampling")
    report_images: int = _f(8, "images per row in report.html's grids (0: no pictures)")
    progress: bool = _f(True, "tqdm progress bars on the long stages")

    def validate(self) -> CurateOptions:
        """Raise `ConfigError` naming the valid values when a field is out of range; returns self."""
        checks = [
            (self.target >= 0, "target must be >= 0 (0: no sampling)"),
            (
                all(math.isfinite(t) and -1 <= t <= 1 for t in (self.dedup_threshold, self.leakage_threshold)),
                "dedup_threshold and leakage_threshold are cosines in [-1, 1]",
            ),
            (self.neighbours >= 1 and self.nprobe >= 1, "neighbours and nprobe must be >= 1"),
            (self.index in ("auto", "flat", "ivf", "torch"), f"index {self.index!r}: use auto, flat, ivf or torch"),
            (all(k >= 1 for k in self.levels), f"levels {self.levels} must be positive cluster counts"),
            (
                not self.sample_sizes or len(self.sample_sizes) == len(self.levels),
                "sample_sizes needs one value per level (set levels too)",
            ),
            (all(r >= 1 for r in self.sample_sizes), "sample_sizes must be >= 1"),
            (self.resample_steps >= 0 and self.kmeans_iters >= 1, "resample_steps >= 0 and kmeans_iters >= 1"),
            (self.strategy in ("random", "closest"), f"strategy {self.strategy!r}: use random or closest"),
            (self.dtype in ("float16", "float32"), f"dtype {self.dtype!r}: use float16 or float32"),
            (self.chunk >= 1 and self.report_images >= 0, "chunk must be >= 1 and report_images >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"curate: {message}")
        return self

    @classmethod
    def from_kwargs(cls, **kwargs) -> CurateOptions:
        """Options from keyword arguments; an unknown name is a `ConfigError` listing the valid ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise ConfigError(f"curate: unknown option(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        return cls(**kwargs).validate()
