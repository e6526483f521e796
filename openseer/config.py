"""Experiment configuration: typed dataclasses, YAML presets, ``a.b=value`` overrides.

The dataclasses below are the single source of defaults and documentation (every field carries a ``help``
string that ``openseer pretrain --help`` prints). A preset is a small YAML diff over these defaults; an
override on the command line is ``section.field=value``. Unknown keys, wrong types and invalid choices are
errors (:class:`ConfigError`) that name what is valid. Derived values (global batch, scaled learning rate,
schedule lengths) come from one function, :func:`derive`, and the resolved config is written into the run
directory.

Nothing in a config is ever executed: YAML is read with ``yaml.safe_load`` and values are checked against
the field types.

This module is a leaf of the package: it imports only :mod:`openseer.errors` (besides the standard library and
PyYAML), so every layer may read its sections. The method sections (``cfg.swav``, ...) come from the method
registry, a layer above, which installs itself here with :func:`install_method_registry` when it is imported
(``import openseer`` always imports it); this module never imports a method.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from openseer.errors import ConfigError

log = logging.getLogger("openseer")

PRESET_DIR = Path(__file__).parent / "configs"

#: The registered methods: a function returning {name: entry}, each entry with ``.config`` (the dataclass of the
#: section ``<name>:``) and ``.validate`` (cross-field checks or None). Installed by the method registry.
_method_entries: Callable[[], Mapping[str, Any]] = dict


def install_method_registry(entries: Callable[[], Mapping[str, Any]]) -> None:
    """Read the method sections from ``entries`` (``openseer.methods.registry.load_methods`` installs itself on
    import): the dependency points from the methods layer down to this leaf, never up."""
    global _method_entries
    _method_entries = entries


def method_configs() -> dict[str, type]:
    """Config section name -> dataclass, for every registered method (built-in methods and plugins)."""
    return {name: entry.config for name, entry in _method_entries().items()}


def _f(default: Any, help: str, resumable: bool = False, **kw: Any) -> Any:
    """A config field with its ``help`` text; ``resumable`` fields may change when a run is resumed
    (`resumable_keys`)."""
    metadata = {"help": help, "resumable": resumable}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


@dataclass
class DataConfig:
    path: str = _f(
        "",
        "Pretraining images: a folder (searched recursively), a tar of images, a file list (.txt, one path "
        "per line), or tar shards to stream: a glob, a brace pattern (shards/train-{000000..000127}.tar), "
        "'::'-joined paths, an fsspec URL (s3://...), or a folder written by `openseer shard` "
        "(docs/data.md). Set by --data.",
        resumable=True,
    )
    num_workers: int = _f(
        -1,
        "DataLoader worker processes; -1 picks from the cores available "
        "(0 on <=2 cores, where workers steal CPU from the model).",
        resumable=True,
    )
    seed_augmentations: bool = _f(
        True,
        "Seed each sample's augmentation from (seed, epoch, index) so that a "
        "resumed run sees exactly the crops of an uninterrupted one.",
    )
    shuffle_buffer: int = _f(
        1000,
        "Shards only: samples each loader worker holds (as compressed bytes) to shuffle across its shards, "
        "on top of the per-epoch shard order; larger mixes better and costs memory (1000 x 100 kB = 100 MB).",
    )
    augment: Literal["reference", "fast"] = _f(
        "reference",
        "reference: SwAV's per-crop PIL pipeline. fast: crops are cut and resized per image (JPEG decoded "
        "at reduced size where no crop needs full resolution), then flip, colour jitter, grayscale, blur "
        "and normalisation run batched on tensors in the main process (on the GPU when training there); "
        "same parameter distributions, not bit-identical (docs/data.md).",
    )


def _view(help: str) -> Any:
    """A view-recipe field: unset (None) means the ``aug.*`` value of the same name."""
    return _f(None, help + " Unset: the aug value.")


@dataclass
class ViewAugConfig:
    """One crop position's own augmentation: any field left unset (null) takes the ``aug.*`` value of the same
    name. BYOL (Grill et al. 2020, table 6; deepmind byol ``augmentations.py`` view1/view2), MoCo v3, Barlow
    Twins, VICReg and DINO blur view 1 always and view 2 with p 0.1, and solarise only view 2 (p 0.2)."""

    flip_prob: float | None = _view("Probability of a horizontal flip.")
    color_jitter: float | None = _view("Colour-jitter strength s (as aug.color_jitter).")
    color_jitter_bcsh: tuple[float, ...] | None = _view(
        "Explicit jitter [brightness, contrast, saturation, hue] (as aug.color_jitter_bcsh)."
    )
    color_jitter_prob: float | None = _view("Probability of applying colour jitter.")
    grayscale_prob: float | None = _view("Probability of converting the crop to grayscale.")
    blur_prob: float | None = _view("Probability of a Gaussian blur.")
    blur_sigma: tuple[float, float] | None = _view("Gaussian blur sigma range, in pixels of the crop.")
    solarize_prob: float | None = _view("Probability of solarising the crop.")
    solarize_threshold: float | None = _view("Solarisation threshold on the 0-255 scale.")


@dataclass
class AugConfig:
    """Multi-crop augmentation (Caron et al. 2020, SwAV, sec. 3.2 and appendix A)."""

    global_crops: int = _f(2, "Number of global (high-resolution) crops; codes are computed from these.")
    global_size: int = _f(224, "Side of a global crop in pixels.")
    global_scale: tuple[float, float] = _f((0.14, 1.0), "RandomResizedCrop area range of global crops.")
    local_crops: int = _f(6, "Number of local (low-resolution) crops; 0 disables multi-crop.")
    local_size: int = _f(96, "Side of a local crop in pixels.")
    local_scale: tuple[float, float] = _f((0.05, 0.14), "RandomResizedCrop area range of local crops.")
    flip_prob: float = _f(0.5, "Probability of a horizontal flip.")
    color_jitter: float = _f(
        1.0,
        "Colour-jitter strength s of SimCLR/SwAV's colour distortion (swav get_color_distortion(s), VISSL "
        "ImgPilColorDistortion strength): ColorJitter(brightness 0.8s, contrast 0.8s, saturation 0.8s, hue "
        "0.2s). SwAV and SEER: 1.0; 0 turns the jitter off; at most 2.5 (hue 0.5).",
    )
    color_jitter_bcsh: tuple[float, ...] = _f(
        (),
        "Explicit ColorJitter [brightness, contrast, saturation, hue] instead of the strength, e.g. BYOL's "
        "[0.4, 0.4, 0.2, 0.1]; [] = use aug.color_jitter. Each >= 0, hue <= 0.5.",
    )
    color_jitter_prob: float = _f(0.8, "Probability of applying colour jitter.")
    grayscale_prob: float = _f(0.2, "Probability of converting a crop to grayscale.")
    blur_prob: float = _f(0.5, "Probability of a Gaussian blur (set 0 for tiny images, as SimCLR on CIFAR).")
    blur_sigma: tuple[float, float] = _f((0.1, 2.0), "Gaussian blur sigma range, in pixels of the crop.")
    solarize_prob: float = _f(0.0, "Probability of solarising a crop (PIL ImageOps.solarize: v -> 255 - v above).")
    solarize_threshold: float = _f(
        128.0, "Solarisation threshold on the 0-255 scale: pixels >= it are inverted (PIL's and the references' 128)."
    )
    interpolation: Literal["bilinear", "bicubic"] = _f(
        "bilinear",
        "Resampling of RandomResizedCrop: bilinear (SwAV, MoCo v3) or bicubic (SimCLR, BYOL, Barlow Twins, "
        "VICReg, DINO).",
    )
    views: list[ViewAugConfig] = _f(
        [],
        "Per-view overrides of the settings above, e.g. [{blur_prob: 1.0}, {blur_prob: 0.1, solarize_prob: 0.2}]: "
        "global crop i uses views[i % len(views)]; [] = every global crop uses the aug.* values. Keys: "
        "flip_prob, color_jitter, color_jitter_bcsh, color_jitter_prob, grayscale_prob, blur_prob, blur_sigma, "
        "solarize_prob, solarize_threshold.",
    )
    local: ViewAugConfig = field(
        default_factory=ViewAugConfig,
        metadata={"help": "Overrides for the local crops (same keys as aug.views), e.g. DINO's blur_prob 0.5."},
    )
    mean: tuple[float, float, float] = _f((0.485, 0.456, 0.406), "Normalisation mean (RGB).")
    std: tuple[float, float, float] = _f((0.229, 0.224, 0.225), "Normalisation std (RGB).")


@dataclass
class RegNetConfig:
    """A RegNet given by its design-space parameters (Radosavovic et al. 2020, "Designing Network Design
    Spaces"), built with timm's ``RegNetCfg``; SEER's RegNetY-10B is depth 27, w0 1744, wa 620.83, wm 2.52,
    group width 1010."""

    depth: int = _f(0, "Total depth d; 0 = no custom RegNet, use model.backbone.")
    w0: int = _f(0, "Initial width w0.")
    wa: float = _f(0.0, "Width slope wa.")
    wm: float = _f(0.0, "Width multiplier wm.")
    group_size: int = _f(0, "Group width g.")
    se_ratio: float = _f(0.25, "Squeeze-excitation ratio (RegNetY: 0.25, RegNetX: 0).")


@dataclass
class ModelConfig:
    backbone: str = _f(
        "regnety_016",
        "timm model name (regnety_*, regnetx_*, resnet*; SEER sizes: regnety_320, "
        "regnety_640, regnety_1280, regnety_2560). Ignored when model.regnet.depth > 0.",
    )
    regnet: RegNetConfig = field(
        default_factory=RegNetConfig,
        metadata={"help": "A RegNet from its design-space parameters instead of a timm name."},
    )
    zero_init_residual: bool = _f(
        True,
        "Zero-initialise the last batch-norm of each residual block (timm's "
        "default). False gives diverse random features from step 0, which small "
        "images and short runs need to leave SwAV's uniform-code start.",
    )
    channels_last: bool = _f(True, "Use channels_last memory format (faster for convnets with bf16 on CPU and GPU).")
    init: str = _f(
        "",
        "Start from pretrained weights (--init): a timm tag (timm:regnety_320.seer), an openseer run dir, or a "
        "VISSL/SEER, SwAV, DINO, torchvision or timm checkpoint file; heads and prototypes are taken too when "
        "the file has them (docs/weights.md). '' = random initialisation. Not re-applied when a run resumes.",
        resumable=True,
    )
    init_strict: bool = _f(
        True,
        "Refuse weights that do not fit exactly; false loads what fits and prints the rest (--init-strict).",
        resumable=True,
    )
    img_size: int = _f(
        0,
        "Vision Transformers: image side their position embeddings are made for (0 = the timm model's, e.g. "
        "224); set it to aug.global_size for small images. Other crop sizes interpolate the embeddings.",
    )
    patch_size: int = _f(
        0,
        "Vision Transformers: patch side in pixels (0 = the timm model's, e.g. 16); it must divide every crop "
        "size. Small images need small patches (4 at 32 px gives 8x8 tokens).",
    )
    drop_path_rate: float = _f(
        0.0, "Stochastic depth of the trained network (timm ViTs, ResNets, RegNets); DINO's ViTs: 0.1."
    )
    vit_style: Literal["timm", "mocov3"] = _f(
        "timm",
        "Vision Transformers: 'timm' = the timm model as registered; 'mocov3' = MoCo v3's ViT (facebookresearch/"
        "moco-v3 vits.py): 12 attention heads, a fixed 2-D sin-cos position embedding and its Xavier init "
        "(mocov3-vit-small). Ignored for convnets.",
    )


@dataclass
class OptimConfig:
    name: Literal["lars", "sgd", "adamw"] = _f(
        "lars", "Optimizer: LARS (LARC without clipping, as SwAV/SEER), SGD with momentum, or AdamW (DINO)."
    )
    base_lr: float = _f(
        0.3,
        "Learning rate per 256 images of global batch; peak lr = base_lr * batch / 256 "
        "(SwAV: 4.8 at 4096 -> 0.3; SEER: 9.6 at 8192 -> 0.3).",
    )
    final_lr_ratio: float = _f(0.001, "Final lr as a fraction of the peak (SwAV: 0.0048 / 4.8).")
    warmup_epochs: float = _f(10.0, "Linear warm-up length in epochs (SwAV: 10 of 100/800 epochs).")
    warmup_start_lr: float = _f(0.0, "lr at the first step of warm-up.")
    weight_decay: float = _f(
        1e-6,
        "Weight decay at the first step (SwAV 1e-6, SEER 1e-5, DINO 0.04); biases and norm layers get none "
        "when exclude_bias_and_norm is set.",
    )
    weight_decay_end: float | None = _f(
        None,
        "Weight decay at the last step, reached by a cosine from weight_decay (DINO: 0.4); null = constant.",
    )
    exclude_bias_and_norm: bool = _f(
        True,
        "Exclude biases and norm-layer weights from weight decay and LARS adaptation (they get plain SGD "
        "momentum at the full lr). SwAV and SEER exclude nothing (false).",
    )
    momentum: float = _f(0.9, "SGD/LARS momentum (AdamW: beta1 stays 0.9).")
    trust_coefficient: float = _f(0.001, "LARS trust coefficient eta.")
    lars_variant: Literal["larc", "lars"] = _f(
        "larc",
        "LARS trust ratio (openseer/ops/lars.py). 'larc': eta*|p|/(|g| + wd*|p|), apex LARC as SwAV, SEER and "
        "DeepCluster-v2 use it; 'lars': eta*|p|/|g + wd*p|, as the BYOL, MoCo v3, SimCLR, Barlow Twins and "
        "VICReg references write it.",
    )
    clip_grad: float = _f(
        0.0, "Clip gradients to this norm (see clip_mode); 0 disables clipping (DINO: 3.0, per parameter)."
    )
    clip_mode: Literal["global", "per_param"] = _f(
        "global",
        "What clip_grad bounds: 'global' = the norm of all gradients together (torch clip_grad_norm_); "
        "'per_param' = each parameter's gradient norm on its own, as DINO's utils.clip_gradients.",
    )


@dataclass
class TrainConfig:
    epochs: int = _f(
        100,
        "Training length in epochs (--epochs). Schedules span whichever of epochs and max_steps ends first.",
        resumable=True,
    )
    max_steps: int = _f(0, "Stop after this many optimizer steps (--max-steps); 0 = no limit.", resumable=True)
    minutes: float = _f(
        0.0,
        "Wall-clock budget in minutes (--minutes); 0 = none. A 50-step throughput probe of this config turns it "
        "into steps that replace the epochs, so every schedule ends at the deadline (kept in RUN_DIR/budget.json "
        "for resuming).",
    )
    batch_size: int = _f(64, "Images per process per step (the global batch is this times the world size).")
    precision: Literal["fp32", "bf16", "fp16"] = _f(
        "bf16",
        "Autocast precision. bf16 is fastest on recent CPUs and GPUs; fp16 uses a gradient scaler (GPU).",
    )
    device: str = _f("auto", "'auto' (cuda if available, else cpu), 'cpu' or 'cuda'.", resumable=True)
    seed: int = _f(0, "Seed for initialisation, data order and augmentation.")
    log_every: int = _f(10, "Write a metrics.jsonl line every N steps (and at the last step).", resumable=True)
    checkpoint_every: int = _f(
        500, "Write a checkpoint every N steps (and at each epoch end and the last step).", resumable=True
    )
    keep_checkpoints: int = _f(2, "Step checkpoints kept besides last.pt (older ones are deleted).", resumable=True)
    health_every: int = _f(
        -1,
        "Steps between label-free health signals (RankMe, alpha-ReQ, feature std of the backbone and of the "
        "method's output on a fixed probe set of pool images, SwAV/DeepCluster-v2 code entropy and occupancy; "
        "docs/evaluation.md 'Is it learning?'); -1 = a quarter epoch rounded up to a "
        "multiple of log_every, 0 = off. Computed when a metrics row is written.",
        resumable=True,
    )
    health_images: int = _f(
        0,
        "Probe images for the health signals (a fixed seeded subset of the pool); 0 = pool/20 within [256, 2000] "
        "(a few percent of the run's time). "
        "More than the pool holds is an error.",
        resumable=True,
    )
    stop_on_collapse: bool = _f(
        False,
        "Stop the run (status 'collapsed', after a checkpoint) when a collapse warning fires; false only warns.",
        resumable=True,
    )
    keep_best_label_free: bool = _f(
        False,
        "Keep the checkpoint of the step with the best label-free score (highest backbone RankMe) as "
        "checkpoints/best_label_free.pt (full checkpoints only).",
        resumable=True,
    )
    max_nonfinite_steps: int = _f(
        20,
        "Abort after this many consecutive steps with a non-finite loss or gradient (each is skipped and reported).",
        resumable=True,
    )
    accumulate_steps: int = _f(
        1,
        "Gradient accumulation: micro-batches of train.batch_size per optimizer step (global batch = "
        "batch_size x processes x accumulate_steps). SwAV's codes come from the whole accumulated batch (a "
        "no-grad forward first, ~1/3 more compute), so the update is the k-times larger batch's; only "
        "batch-norm statistics stay per micro-batch, as per GPU without sync BN (docs/distributed.md).",
    )


@dataclass
class ParallelConfig:
    """Scale-out settings (docs/distributed.md). They change how a run is executed, not what it learns."""

    strategy: Literal["ddp", "fsdp"] = _f(
        "ddp",
        "Data-parallel wrapper when launched on several processes (--strategy): ddp replicates the model; "
        "fsdp (FSDP2 fully_shard) shards parameters, gradients and optimizer state (SEER-sized models).",
        resumable=True,
    )
    fsdp_unit: Literal["block", "stage"] = _f(
        "block",
        "FSDP2 sharding unit: every residual block (least memory) or every stage (fewer, larger collectives).",
        resumable=True,
    )
    fsdp_reshard_after_forward: bool = _f(
        True,
        "Free gathered parameters after each unit's forward (ZeRO-3); false keeps them (ZeRO-2, faster).",
        resumable=True,
    )
    fsdp_cpu_offload: bool = _f(
        False,
        "Keep sharded parameters, gradients and optimizer state in CPU memory (FSDP2 CPUOffloadPolicy).",
        resumable=True,
    )
    activation_checkpointing: bool = _f(
        False,
        "Recompute the activations of residual blocks in the backward pass (torch.utils.checkpoint): "
        "much less activation memory for about 30% more compute. SEER used it for 256GF and 10B.",
        resumable=True,
    )
    recompute_every: int = _f(
        1, "With activation_checkpointing: recompute every k-th block of each stage (1 = every block).", resumable=True
    )
    checkpoint_stages: list[int] = _f(
        [],
        "With activation_checkpointing: 1-based stages whose blocks are checkpointed; [] = all stages.",
        resumable=True,
    )
    sync_batchnorm: bool = _f(
        False,
        "Compute batch-norm statistics over the processes of a group (an all-reduce that works on gloo "
        "and nccl) instead of per process. SEER: true.",
        resumable=True,
    )
    batchnorm_group_size: int = _f(
        0, "Processes per batch-norm group with sync_batchnorm (0 = all; SEER: 64 of 512 GPUs).", resumable=True
    )
    checkpoint_format: Literal["auto", "full", "sharded"] = _f(
        "auto",
        "full: one last.pt written by rank 0; sharded: torch.distributed.checkpoint, every process writes "
        "its shard (resumable on another number of processes); auto = sharded with fsdp, else full.",
        resumable=True,
    )


@dataclass
class EvalConfig:
    image_size: int = _f(0, "Evaluation image side; 0 = the global crop size.")
    crop_pct: float = _f(
        0.875,
        "Resize the shorter side to image_size / crop_pct, then centre-crop "
        "(0.875 for 224 px; 1.0 for tiny images such as CIFAR).",
    )
    batch_size: int = _f(256, "Batch size for feature extraction.")


@dataclass
class MonitorConfig:
    train: str = _f(
        "", "Labelled images (ImageFolder folder or tar) used as the kNN bank while training; '' = off.", resumable=True
    )
    test: str = _f(
        "", "Labelled images the online kNN monitor classifies (set together with monitor.train).", resumable=True
    )
    every: int = _f(100, "Steps between monitor runs (and at the last step).", resumable=True)
    k: int = _f(20, "Neighbours of the weighted kNN vote.", resumable=True)
    max_train: int = _f(5000, "Class-balanced cap on the bank images (0 = all).", resumable=True)
    max_test: int = _f(1000, "Class-balanced cap on the classified images (0 = all).", resumable=True)


@dataclass
class LogConfig:
    """Where else the metrics go, besides metrics.jsonl (docs/weights.md; extras: tensorboard, wandb)."""

    tensorboard: bool = _f(False, "Also write TensorBoard event files into RUN_DIR/tensorboard.", resumable=True)
    wandb: str = _f(
        "", "Also log to Weights & Biases under this project name ('' = off); needs `wandb login`.", resumable=True
    )


@dataclass(eq=False)
class Config:
    """The whole experiment. Besides the fixed sections, every registered method has a section named after it
    (``cfg.swav``, ``cfg.dino``; :mod:`openseer.methods.registry`), created with its defaults on first use and
    kept in ``sections``; ``cfg.method_config()`` is the active method's."""

    method: str = _f("swav", "Self-supervised method (openseer presets lists them).")
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sections: dict[str, Any] = field(default_factory=dict, repr=False)  # method name -> its config section
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __getattr__(self, name: str) -> Any:  # only reached when ordinary lookup fails: method sections
        if name.startswith("_") or name == "sections":
            raise AttributeError(name)
        configs = method_configs()
        if name not in configs:
            raise AttributeError(f"Config has no section {name!r}")
        sections = self.__dict__.setdefault("sections", {})
        if name not in sections:
            sections[name] = configs[name]()
        return sections[name]

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__dataclass_fields__ and name in method_configs():
            self.__dict__.setdefault("sections", {})[name] = value
        else:
            object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and to_dict(self) == to_dict(other)

    def method_config(self) -> Any:
        return getattr(self, self.method)

    def dumped_sections(self) -> dict[str, Any]:
        """The method sections a dump holds: the active method's, and any other that differs from defaults."""
        configs = method_configs()
        out = {}
        for name, cls in configs.items():
            section = self.sections.get(name)
            if name == self.method:
                out[name] = getattr(self, name)
            elif section is not None and to_dict(section) != to_dict(cls()):
                out[name] = section
        return out


# --------------------------------------------------------------------------------------------------------
# loading, overriding, checking


#: Keys that moved (old dotted key -> new one). Old YAML files, overrides and run directories keep loading: the
#: value goes to the new key and a note says so.
RENAMED_KEYS = {
    **{f"model.regnet_{k}": f"model.regnet.{k}" for k in ("depth", "w0", "wa", "wm", "group_size", "se_ratio")},
    # activation recompute, not to be confused with train.checkpoint_every (checkpoint files)
    "parallel.checkpoint_every": "parallel.recompute_every",
}


def upgrade_keys(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested config dict ``values`` with every key of `RENAMED_KEYS` moved to its new place."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for old, new in RENAMED_KEYS.items():
        section, name = old.split(".")
        if not isinstance(values.get(section), dict) or name not in values[section]:
            continue
        value = values[section].pop(name)
        log.warning("config key %r is now %r; using the value there (rename it in your YAML/overrides)", old, new)
        *parents, leaf = new.split(".")
        target = values
        for part in parents:
            target[part] = dict(target.get(part) or {})
            target = target[part]
        target[leaf] = value
    return values


def resumable_keys(cls: type | None = None, prefix: str = "") -> set[str]:
    """Dotted keys whose fields are declared ``resumable``: a resumed run may change them."""
    cls = cls or Config
    keys = set()
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, tp in hints.items():  # the fixed fields and, for Config, the method sections
        if dataclasses.is_dataclass(tp):
            keys |= resumable_keys(tp, f"{prefix}{name}.")
        elif name in fields and fields[name].metadata.get("resumable"):
            keys.add(f"{prefix}{name}")
    return keys


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    if cls is Config:
        hints = {k: v for k, v in hints.items() if k != "sections"}
        hints.update(method_configs())
    return hints


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (e.g. list -> tuple, int -> float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}={value!r} is not valid; expected {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} has the wrong type; expected a list like {list(args)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}={value!r} needs {len(args)} values")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} has the wrong type; expected a list")
        return [_coerce(v, arg, f"{key}[{i}]" if dataclasses.is_dataclass(arg) else key) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} has the wrong type; expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} has the wrong type; expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} has the wrong type; expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} has the wrong type; expected a string")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} is a section; expected a mapping of its fields")
        obj = tp()
        _apply_dict(obj, value, key)
        return obj
    raise ConfigError(f"{key}: unsupported field type {tp}")


def _unknown(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}; valid keys here: {', '.join(sorted(valid))}")


def _apply_dict(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    if not prefix:
        values = upgrade_keys(values)
    hints = _field_types(type(obj))
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in hints:
            raise _unknown(key, list(hints))
        tp = hints[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _apply_dict(current, value, key)
        else:
            setattr(obj, name, _coerce(value, tp, key))


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``cfg.<dotted> = value`` with the same checks as a YAML preset."""
    parts = dotted.split(".")
    nested: dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        nested = {p: nested}
    _apply_dict(cfg, nested)


def parse_override(text: str) -> tuple[str, Any]:
    """``'optim.base_lr=0.6'`` -> ``('optim.base_lr', 0.6)``; values are YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.batch_size=128)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse value ({e.__class__.__name__})") from None
    return key.strip(), value


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description (the first comment line of the YAML)."""
    out = {}
    for p in sorted(PRESET_DIR.glob("*.yaml")):
        first = p.read_text().splitlines()[0] if p.stat().st_size else ""
        out[p.stem] = first.lstrip("# ").strip()
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None  # one line
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def _preset_path(preset: str, relative_to: Path | None = None) -> Path:
    """The YAML file of a preset name or path (a relative path in a ``base:`` is relative to that file)."""
    path = Path(preset)
    if relative_to is not None and not path.is_absolute() and path.suffix in (".yaml", ".yml"):
        path = relative_to.parent / path
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {preset!r} does not exist")
        return path
    path = PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(list_presets())
        close = difflib.get_close_matches(preset, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown preset {preset!r}{hint}; presets: {', '.join(names)}")
    return path


def _merge(base: dict[str, Any], diff: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``diff`` laid over it, section by section (a list or a value replaces the base's)."""
    out = dict(base)
    for key, value in diff.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_preset(preset: str, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The values of a preset (name or YAML path) with its ``base:`` chain resolved.

    A preset may start with ``base: other-preset`` (a name, or a YAML path relative to this file) and then list
    only what differs; the base's values come first, this file's replace them key by key.
    """
    path = _preset_path(preset, _chain[-1] if _chain else None).resolve()
    if path in _chain:
        names = " -> ".join(p.stem for p in (*_chain, path))
        raise ConfigError(f"presets inherit in a circle: {names}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return upgrade_keys(data)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must name a preset or a YAML file, got {base!r}")
    return _merge(read_preset(base, (*_chain, path)), upgrade_keys(data))


def load_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a config from the defaults, an optional preset name or YAML path (with its ``base:`` chain), and
    overrides."""
    cfg = Config()
    if preset:
        _apply_dict(cfg, read_preset(preset))
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


def config_from_dict(values: dict[str, Any]) -> Config:
    cfg = Config()
    _apply_dict(cfg, values)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, Config):  # method sections sit where the section "swav" always was: after model
            out = {}
            for f in dataclasses.fields(v):
                if f.name == "sections":
                    out.update({k: conv(s) for k, s in v.dumped_sections().items()})
                else:
                    out[f.name] = conv(getattr(v, f.name))
            return out
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def validate(cfg: Config) -> None:
    """Cross-field checks that a type cannot express."""
    methods = method_configs()  # loads the built-in and plugin methods
    if cfg.method not in methods:
        raise ConfigError(f"method={cfg.method!r} is unknown; methods: {', '.join(methods)}")
    a, t, m = cfg.aug, cfg.train, cfg.model
    positive = {
        "aug.global_crops": a.global_crops,
        "aug.global_size": a.global_size,
        "train.batch_size": t.batch_size,
        "train.epochs": t.epochs,
        "train.log_every": t.log_every,
        "train.checkpoint_every": t.checkpoint_every,
        "train.accumulate_steps": t.accumulate_steps,
        "parallel.recompute_every": cfg.parallel.recompute_every,
        "monitor.every": cfg.monitor.every,
        "monitor.k": cfg.monitor.k,
    }
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{key}={v} must be positive")
    for key, v in {
        "aug.local_crops": a.local_crops,
        "train.max_steps": t.max_steps,
        "optim.warmup_epochs": cfg.optim.warmup_epochs,
        "monitor.max_train": cfg.monitor.max_train,
        "monitor.max_test": cfg.monitor.max_test,
        "train.health_images": t.health_images,
    }.items():
        if v < 0:
            raise ConfigError(f"{key}={v} must be >= 0")
    if t.health_every < -1:
        raise ConfigError(f"train.health_every={t.health_every} must be -1 (auto), 0 (off) or a number of steps")
    if not (math.isfinite(t.minutes) and t.minutes >= 0):
        raise ConfigError(f"train.minutes={t.minutes} must be a number of minutes >= 0 (0 = no time budget)")
    if a.local_crops and a.local_size <= 0:
        raise ConfigError(f"aug.local_size={a.local_size} must be positive when aug.local_crops > 0")
    for key, (lo, hi) in {
        "aug.global_scale": a.global_scale,
        "aug.local_scale": a.local_scale,
    }.items():
        if not 0 < lo <= hi:
            raise ConfigError(f"{key}={[lo, hi]} must satisfy 0 < low <= high")
    _validate_recipe("aug", a)
    for i, view in enumerate(a.views):
        _validate_recipe(f"aug.views[{i}]", view)
    _validate_recipe("aug.local", a.local)
    if m.regnet.depth and min(m.regnet.w0, m.regnet.group_size) <= 0:
        raise ConfigError("model.regnet.depth > 0 needs model.regnet.w0, wa, wm and group_size")
    if cfg.parallel.batchnorm_group_size < 0 or any(s < 1 for s in cfg.parallel.checkpoint_stages):
        raise ConfigError("parallel.batchnorm_group_size must be >= 0 and parallel.checkpoint_stages 1-based")
    if t.device not in ("auto", "cpu", "cuda") and not t.device.startswith("cuda:"):
        raise ConfigError(f"train.device={t.device!r}; expected auto, cpu, cuda or cuda:N")
    if bool(cfg.monitor.train) != bool(cfg.monitor.test):
        raise ConfigError("monitor.train and monitor.test (--monitor-train/--monitor-test) go together")
    if cfg.optim.weight_decay < 0 or (cfg.optim.weight_decay_end or 0) < 0:
        raise ConfigError("optim.weight_decay and optim.weight_decay_end must be >= 0")
    entry = _method_entries()[cfg.method]
    if entry.validate is not None:
        entry.validate(cfg)


def _validate_recipe(prefix: str, r: AugConfig | ViewAugConfig) -> None:
    """Ranges of the per-crop augmentation settings of ``aug`` or of one view recipe (unset fields skipped)."""
    if r.color_jitter is not None and not 0.0 <= r.color_jitter <= 2.5:
        raise ConfigError(f"{prefix}.color_jitter={r.color_jitter} is a strength s in [0, 2.5] (hue 0.2s <= 0.5)")
    bcsh = r.color_jitter_bcsh
    if bcsh and (len(bcsh) != 4 or min(bcsh) < 0 or bcsh[3] > 0.5):
        raise ConfigError(
            f"{prefix}.color_jitter_bcsh={list(bcsh)} must be [brightness, contrast, saturation, hue], each >= 0 "
            "and hue <= 0.5 (e.g. [0.4, 0.4, 0.2, 0.1]), or [] for the strength color_jitter"
        )
    for key in ("flip_prob", "color_jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
        v = getattr(r, key)
        if v is not None and not 0.0 <= v <= 1.0:
            raise ConfigError(f"{prefix}.{key}={v} must be a probability in [0, 1]")
    if r.blur_sigma is not None and not 0 < r.blur_sigma[0] <= r.blur_sigma[1]:
        raise ConfigError(f"{prefix}.blur_sigma={list(r.blur_sigma)} must satisfy 0 < low <= high")
    t = r.solarize_threshold
    if t is not None and not 0.0 <= t <= 255.0:
        raise ConfigError(f"{prefix}.solarize_threshold={t} must lie in the image range [0, 255] (references: 128)")


# --------------------------------------------------------------------------------------------------------
# derived values


@dataclass(frozen=True)
class Derived:
    """Values computed from the config and the run's size; written next to the config in the run dir."""

    world_size: int
    global_batch: int  # images per optimizer step: batch_size x processes x accumulate_steps
    steps_per_epoch: int
    total_steps: int
    epochs: int
    warmup_steps: int
    peak_lr: float
    final_lr: float


@dataclass(frozen=True)
class RunInfo:
    """Sizes the loop derives before building a method (see :func:`derive`); part of the method contract
    (``openseer.methods.base`` re-exports it). :func:`openseer.train.setup.setup_run` builds it once and hands
    the same object to the method and to the training step."""

    global_batch: int  # images per optimizer step over all processes and accumulation steps
    local_batch: int  # images per micro-batch on one process (train.batch_size)
    world_size: int
    accumulate_steps: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, cfg: Any, derived: Derived) -> RunInfo:
        """From a config and its :class:`Derived` (``derive(cfg, images, world_size)``)."""
        return cls(
            global_batch=derived.global_batch,
            local_batch=cfg.train.batch_size,
            world_size=derived.world_size,
            accumulate_steps=cfg.train.accumulate_steps,
            steps_per_epoch=derived.steps_per_epoch,
            total_steps=derived.total_steps,
        )


def global_batch(batch_size: int, world_size: int, accumulate_steps: int) -> int:
    """The one formula of the global batch: images per optimizer step = per-process micro-batch x processes x
    accumulation steps (also applied to the config dict of an old checkpoint when resuming)."""
    return batch_size * world_size * accumulate_steps


def global_batch_size(cfg: Config, world_size: int = 1) -> int:
    """Images per optimizer step over all processes and accumulation steps (used by derive, info, report)."""
    return global_batch(cfg.train.batch_size, world_size, cfg.train.accumulate_steps)


def derive(cfg: Config, dataset_size: int, world_size: int = 1, budget_steps: int | None = None) -> Derived:
    """The one place where lr scaling, global batch and schedule lengths are computed; ``budget_steps`` (the
    steps of a ``train.minutes`` budget, `openseer.train.budget`) replace the epochs."""
    global_batch = global_batch_size(cfg, world_size)
    steps_per_epoch = dataset_size // global_batch
    if steps_per_epoch < 1:
        raise ConfigError(
            f"the dataset has {dataset_size} images, fewer than one global batch of {global_batch} "
            f"(train.batch_size={cfg.train.batch_size} x {world_size} processes x "
            f"{cfg.train.accumulate_steps} accumulation steps); lower train.batch_size"
        )
    total = steps_per_epoch * cfg.train.epochs if budget_steps is None else budget_steps
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    epochs = math.ceil(total / steps_per_epoch)
    warmup = min(round(cfg.optim.warmup_epochs * steps_per_epoch), total)
    peak = cfg.optim.base_lr * global_batch / 256
    return Derived(
        world_size,
        global_batch,
        steps_per_epoch,
        total,
        epochs,
        warmup,
        peak,
        peak * cfg.optim.final_lr_ratio,
    )


def run_info(cfg: Config, world_size: int = 1, dataset_size: int | None = None) -> RunInfo:
    """The sizes a method is built with; without a dataset size, one epoch is one global batch (info, report,
    benchmarks and tests that build a method without data)."""
    size = dataset_size if dataset_size is not None else global_batch_size(cfg, world_size)
    return RunInfo.of(cfg, derive(cfg, size, world_size))


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every config field, for ``--help``."""
    rows = []
    hints = _field_types(cls)
    obj = cls()
    names = [f.name for f in dataclasses.fields(cls)]
    if cls is Config:
        i = names.index("sections")
        names[i : i + 1] = list(method_configs())
    for name in names:
        key = f"{prefix}{name}"
        value = getattr(obj, name)
        tp = hints[name]
        meta = next((f.metadata for f in dataclasses.fields(cls) if f.name == name), {})
        if dataclasses.is_dataclass(tp):
            rows.extend(field_help(tp, key + "."))
        else:
            default = list(value) if isinstance(value, tuple) else value
            rows.append((key, repr(default), meta.get("help", "")))
    return rows
