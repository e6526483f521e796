"""Image data: sources (folders, tars, file lists, tar shards), robust decoding, multi-crop augmentation,
samplers, the resumable shard stream and the packing tool (docs/data.md)."""

from openseer.data.images import IMAGE_EXTENSIONS, BadImage, DataError, load_rgb
from openseer.data.lists import open_source
from openseer.data.loader import (
    EpochSampler,
    LabelledDataset,
    MultiCropBatch,
    PretrainDataset,
    auto_num_workers,
    build_pretrain_loader,
    collate_multicrop,
)
from openseer.data.pack import write_shards
from openseer.data.pipeline import build_pretrain_data
from openseer.data.shards import ShardSet, expand_shards, is_shard_spec
from openseer.data.sources import ImageSource, subset
from openseer.data.stream import ShardStream
from openseer.data.transforms import MultiCropTransform, eval_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImage",
    "DataError",
    "EpochSampler",
    "ImageSource",
    "LabelledDataset",
    "MultiCropBatch",
    "MultiCropTransform",
    "PretrainDataset",
    "ShardSet",
    "ShardStream",
    "auto_num_workers",
    "build_pretrain_data",
    "build_pretrain_loader",
    "collate_multicrop",
    "eval_transform",
    "expand_shards",
    "is_shard_spec",
    "load_rgb",
    "open_source",
    "subset",
    "write_shards",
]
