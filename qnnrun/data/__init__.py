"""Data sets and loaders: small sets held whole on the training device, image folders streamed.

``dataset_info(cfg)`` describes a data set from its config alone; ``build_data(cfg, ...)`` loads
it and returns a :class:`DataBundle` of two loaders that yield ``(images, labels)`` batches,
float32 [B, C, H, W] normalized and int64 [B], on the training device.
"""

from qnnrun.data.augment import crop_at, crop_offsets, flip_mask, random_crop, random_hflip
from qnnrun.data.build import DATASETS, DataBundle, DataInfo, build_data, dataset_info
from qnnrun.data.imagefolder import ImageFolderLoader
from qnnrun.data.loader import Loader, TensorLoader, epoch_generator

__all__ = [
    "DATASETS",
    "DataBundle",
    "DataInfo",
    "ImageFolderLoader",
    "Loader",
    "TensorLoader",
    "build_data",
    "crop_at",
    "crop_offsets",
    "dataset_info",
    "epoch_generator",
    "flip_mask",
    "random_crop",
    "random_hflip",
]
