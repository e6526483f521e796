"""Image data: sources (folders, tars), robust decoding, multi-crop augmentation, samplers and loaders."""

from openseer.data.images import IMAGE_EXTENSIONS, BadImage, DataError, load_rgb
from openseer.data.loader import (
    EpochSampler,
    LabelledDataset,
    MultiCropBatch,
    PretrainDataset,
    auto_num_workers,
    build_pretrain_loader,
    collate_multicrop,
)
from openseer.data.sources import ImageSource, open_source, subset
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
    "auto_num_workers",
    "build_pretrain_loader",
    "collate_multicrop",
    "eval_transform",
    "load_rgb",
    "open_source",
    "subset",
]
