"""Turn a ``dataset`` config (``conf/dataset/<name>.yaml``) into training and evaluation loaders."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf.errors import MissingMandatoryValue

from qnnrun.data.imagefolder import ImageFolderLoader, imagefolder_transform, open_imagefolder
from qnnrun.data.loader import Loader, TensorLoader
from qnnrun.data.sources import (
    Split,
    load_cifar10_splits,
    load_cifar100_splits,
    load_digits_splits,
    load_mnist_splits,
)
from qnnrun.errors import QnnrunError

# (train, test) sample counts known without reading anything; 0 = only known after loading.
KNOWN_SIZES: dict[str, tuple[int, int]] = {
    "digits": (1437, 360),
    "mnist": (60000, 10000),
    "fashion_mnist": (60000, 10000),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
    "imagefolder": (0, 0),
}
DATASETS: tuple[str, ...] = tuple(KNOWN_SIZES)


@dataclass(frozen=True)
class DataInfo:
    """Static description of a data set: what a model needs to be built."""

    name: str
    in_channels: int
    image_size: int  # square side in pixels
    num_classes: int
    train_size: int  # number of training samples (0 if unknown before loading)
    test_size: int


@dataclass
class DataBundle:
    """Loaders of one data set, with its :class:`DataInfo` as actually loaded."""

    info: DataInfo
    train: Loader  # shuffled, augmented when the config says so
    test: Loader  # stored order, never augmented


def _require(cfg: Mapping, key: str) -> Any:
    """``cfg[key]``, with an absent or ``???`` value reported as a QnnrunError."""
    try:
        value = cfg[key]
    except (KeyError, MissingMandatoryValue):
        value = "???"
    if value is None or value == "???":
        raise QnnrunError(f"dataset.{key} is required: set dataset.{key}=VALUE")
    return value


def _floats(cfg: Mapping, key: str) -> list[float]:
    return [float(v) for v in _require(cfg, key)]


def dataset_info(cfg: Mapping) -> DataInfo:
    """The data set's shape from its config alone (no file access): channels, square image side
    in pixels, number of classes; train/test sizes are the known constants (0 for imagefolder)."""
    name = str(_require(cfg, "name"))
    if name not in KNOWN_SIZES:
        raise QnnrunError(f"unknown dataset.name {name!r}; valid names: {', '.join(DATASETS)}")
    return DataInfo(
        name=name,
        in_channels=int(_require(cfg, "in_channels")),
        image_size=int(_require(cfg, "image_size")),
        num_classes=int(_require(cfg, "num_classes")),
        train_size=KNOWN_SIZES[name][0],
        test_size=KNOWN_SIZES[name][1],
    )


def build_data(
    cfg: Mapping,
    *,
    data_dir: str | Path,
    cache_dir: str | Path,
    device: torch.device | str,
    seed: int,
) -> DataBundle:
    """Load the data set named by ``cfg.name`` and wrap it in loaders yielding batches on ``device``.

    ``data_dir`` holds the raw data (torchvision layouts; relative ``imagefolder`` roots are taken
    from there), ``cache_dir`` receives decoded caches, ``seed`` fixes every epoch's order and
    augmentation together with the epoch number. Small data sets are read whole into device
    memory; ``imagefolder`` streams from disk with DataLoader workers.
    """
    info = dataset_info(cfg)
    data_dir = Path(data_dir).expanduser()
    device = torch.device(device)
    if info.name == "imagefolder":
        return _build_imagefolder(cfg, info, data_dir, device, seed)

    train, test = SOURCES[info.name](cfg, data_dir, Path(cache_dir).expanduser())
    loaded = replace(
        info,
        in_channels=train.images.shape[1],
        image_size=train.images.shape[-1],
        num_classes=int(train.labels.max()) + 1,
        train_size=len(train.labels),
        test_size=len(test.labels),
    )
    for field in ("in_channels", "image_size", "num_classes"):
        if getattr(loaded, field) != getattr(info, field):
            raise QnnrunError(
                f"dataset.{field}={getattr(info, field)} but {info.name} has {getattr(loaded, field)}; "
                f"fix conf/dataset/{info.name}.yaml or the override"
            )
    common = dict(mean=_floats(cfg, "mean"), std=_floats(cfg, "std"), device=device, seed=seed)
    train_loader = TensorLoader(
        train.images,
        train.labels,
        batch_size=int(_require(cfg, "batch_size")),
        shuffle=True,
        drop_last=bool(cfg["drop_last"]),
        augment=bool(cfg["augment"]),
        crop_padding=int(cfg["crop_padding"]),
        hflip=bool(cfg["hflip"]),
        **common,
    )
    test_loader = TensorLoader(
        test.images, test.labels, batch_size=int(cfg["eval_batch_size"]), **common
    )
    return DataBundle(loaded, train_loader, test_loader)


# The in-memory data sets by name: (dataset config, data folder, cache folder) -> (train, test).
SOURCES: dict[str, Callable[[Mapping, Path, Path], tuple[Split, Split]]] = {
    "digits": lambda cfg, data_dir, cache_dir: load_digits_splits(),
    "mnist": lambda cfg, data_dir, cache_dir: load_mnist_splits(
        data_dir, fashion=False, download=bool(cfg["download"])),
    "fashion_mnist": lambda cfg, data_dir, cache_dir: load_mnist_splits(
        data_dir, fashion=True, download=bool(cfg["download"])),
    "cifar10": lambda cfg, data_dir, cache_dir: load_cifar10_splits(
        data_dir, cache_dir, download=bool(cfg["download"]), skip_bad=bool(cfg["skip_bad"])),
    "cifar100": lambda cfg, data_dir, cache_dir: load_cifar100_splits(
        data_dir, download=bool(cfg["download"])),
}


def _build_imagefolder(
    cfg: Mapping, info: DataInfo, data_dir: Path, device: torch.device, seed: int
) -> DataBundle:
    if info.in_channels != 3:
        raise QnnrunError(f"dataset.in_channels={info.in_channels} but imagefolder images are read as RGB (3)")
    root = data_dir / Path(str(_require(cfg, "root"))).expanduser()
    mean, std = _floats(cfg, "mean"), _floats(cfg, "std")
    train_set = open_imagefolder(
        root / str(cfg["train_split"]),
        imagefolder_transform(info.image_size, mean, std, train=bool(cfg["augment"])),
    )
    val_set = open_imagefolder(
        root / str(cfg["val_split"]),
        imagefolder_transform(info.image_size, mean, std, train=False),
    )
    if val_set.classes != train_set.classes:
        raise QnnrunError(
            f"class folders differ between {train_set.root} ({len(train_set.classes)}) "
            f"and {val_set.root} ({len(val_set.classes)})"
        )
    batch_size = int(_require(cfg, "batch_size"))
    common = dict(device=device, seed=seed, num_workers=int(cfg["num_workers"]),
                  skip_bad=bool(cfg["skip_bad"]))
    train_loader = ImageFolderLoader(
        train_set, batch_size=batch_size, shuffle=True, drop_last=bool(cfg["drop_last"]), **common
    )
    test_loader = ImageFolderLoader(
        val_set, batch_size=int(cfg["eval_batch_size"]), shuffle=False, **common
    )
    loaded = replace(
        info, num_classes=len(train_set.classes), train_size=len(train_set), test_size=len(val_set)
    )
    return DataBundle(loaded, train_loader, test_loader)
