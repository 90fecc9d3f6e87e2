"""Read the small data sets into whole uint8 tensors (no per-sample Python except JPEG reads).

Each reader returns a :class:`Split` per split: uint8 images [N, C, H, W] (pixel values 0..255)
and int64 labels [N], on the CPU.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from torchvision.io import ImageReadMode, decode_jpeg

from qnnrun.checkpoint import save_atomic
from qnnrun.errors import QnnrunError

log = logging.getLogger("qnnrun")


class Split(NamedTuple):
    """One split of a data set: uint8 images [N, C, H, W] and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor


def load_digits_splits() -> tuple[Split, Split]:
    """scikit-learn's 8x8 digits as (train, test): [1437|360, 1, 8, 8] uint8.

    The 0..16 intensities are rescaled to 0..255 (``round(v * 255 / 16)``); the split is the
    fixed stratified 80/20 one (``random_state=0``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    pixels = np.rint(x * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        pixels, y, test_size=0.2, stratify=y, random_state=0
    )
    return (
        Split(torch.from_numpy(x_train), torch.from_numpy(y_train).long()),
        Split(torch.from_numpy(x_test), torch.from_numpy(y_test).long()),
    )


def _torchvision_splits(
    dataset_cls: type, data_dir: Path, download: bool, missing: str
) -> list[torchvision.datasets.VisionDataset]:
    """Instantiate a torchvision data set for [train, test], turning its errors into ours.

    ``missing`` is the message for absent data when not downloading.
    """
    try:
        return [dataset_cls(root=str(data_dir), train=train, download=download) for train in (True, False)]
    except (RuntimeError, OSError) as err:
        if download:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise QnnrunError(
                f"{dataset_cls.__name__} download into {data_dir} failed ({reason}); "
                f"check the network, or download=false with the files already under paths.data_dir"
            ) from None
        raise QnnrunError(missing) from None


def load_mnist_splits(data_dir: Path, *, fashion: bool, download: bool) -> tuple[Split, Split]:
    """MNIST or Fashion-MNIST in torchvision's layout ``<data_dir>/<Name>/raw/*-ubyte``:
    (train, test) with [60000|10000, 1, 28, 28] uint8 images."""
    cls = torchvision.datasets.FashionMNIST if fashion else torchvision.datasets.MNIST
    raw = data_dir / cls.__name__ / "raw"
    missing = (
        f"{cls.__name__} not found: looked in {raw} (torchvision layout); set paths.data_dir=DIR "
        f"to a folder holding {cls.__name__}/raw/*-ubyte, or dataset.download=true when online"
    )
    train, test = _torchvision_splits(cls, data_dir, download, missing)
    return tuple(Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long()) for ds in (train, test))


def _cifar_python_splits(cls: type, data_dir: Path, download: bool, missing: str) -> tuple[Split, Split]:
    train, test = _torchvision_splits(cls, data_dir, download, missing)
    return tuple(
        Split(
            torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),  # HWC -> CHW
            torch.tensor(ds.targets, dtype=torch.int64),
        )
        for ds in (train, test)
    )


def load_cifar100_splits(data_dir: Path, *, download: bool) -> tuple[Split, Split]:
    """CIFAR-100 (fine labels) in torchvision's python format ``<data_dir>/cifar-100-python``:
    (train, test) with [50000|10000, 3, 32, 32] uint8 images."""
    cls = torchvision.datasets.CIFAR100
    python_dir = data_dir / cls.base_folder
    missing = (
        f"CIFAR-100 not found: looked in {python_dir} (torchvision python format); set "
        f"paths.data_dir=DIR to a folder holding {cls.base_folder}/, or dataset.download=true when online"
    )
    return _cifar_python_splits(cls, data_dir, download, missing)


CIFAR10_JPG = "cifar10-jpg"


def load_cifar10_splits(data_dir: Path, cache_dir: Path, *, download: bool,
                        skip_bad: bool = False) -> tuple[Split, Split]:
    """CIFAR-10 as (train, test) with [50000|10000, 3, 32, 32] uint8 images.

    Reads torchvision's python format ``<data_dir>/cifar-10-batches-py`` when present, else the
    JPEG tree ``<data_dir>/cifar10-jpg/{train,test}/<class>/*.jpg`` (decoded once, then cached as
    ``<cache_dir>/cifar10-jpg-{train,test}.pt``; ``skip_bad`` as in :func:`load_jpeg_split`),
    else downloads the python format if asked.
    """
    cls = torchvision.datasets.CIFAR10
    python_dir = data_dir / cls.base_folder
    jpg_dir = data_dir / CIFAR10_JPG
    if not python_dir.exists() and (jpg_dir / "train").is_dir():
        return (
            load_jpeg_split(jpg_dir, "train", cache_dir, skip_bad=skip_bad),
            load_jpeg_split(jpg_dir, "test", cache_dir, skip_bad=skip_bad),
        )
    missing = (
        f"CIFAR-10 not found: looked in {python_dir} (torchvision python format) and "
        f"{jpg_dir}/{{train,test}} (JPEG class folders); set paths.data_dir=DIR to a folder holding "
        f"{cls.base_folder}/ or {CIFAR10_JPG}/ (tar xzf cifar10-jpg.tar.gz -C DIR), "
        f"or dataset.download=true when online"
    )
    return _cifar_python_splits(cls, data_dir, download, missing)


def load_jpeg_split(jpg_dir: Path, split: str, cache_dir: Path, *, skip_bad: bool = False) -> Split:
    """One split of a JPEG class-folder tree ``<jpg_dir>/<split>/<class>/*.jpg`` of equally
    sized images, as uint8 RGB [N, 3, H, W] with labels in sorted-folder (ImageFolder) order.

    A file that does not decode, or whose size differs from the most common one, is an error
    naming the file; with ``skip_bad`` such files are left out and counted in the log. The first
    call decodes every file and saves the result (and the list of bad files) to
    ``<cache_dir>/<jpg_dir.name>-<split>.pt``; later calls load that file instead.
    """
    cache = cache_dir / f"{jpg_dir.name}-{split}.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        report_bad_files(saved.get("bad", []), skip_bad)
        return Split(saved["images"], saved["labels"])
    split_dir = jpg_dir / split
    if not split_dir.is_dir():
        raise QnnrunError(
            f"{split} split not found: looked in {split_dir}; unpack the whole archive "
            f"(tar xzf {jpg_dir.name}.tar.gz -C {jpg_dir.parent})"
        )
    folder = torchvision.datasets.ImageFolder(str(split_dir))
    decoded, bad = _decode_files([path for path, _ in folder.samples])
    shapes = Counter(tuple(image.shape) for image in decoded if image is not None)
    if not shapes:
        raise QnnrunError(f"no image under {split_dir} could be read as a JPEG, e.g. {bad[0][0]}: {bad[0][1]}")
    common = shapes.most_common(1)[0][0]
    for index, image in enumerate(decoded):
        if image is not None and tuple(image.shape) != common:
            bad.append((folder.samples[index][0], f"size {tuple(image.shape)} differs from the others' {common}"))
            decoded[index] = None
    bad.sort()
    report_bad_files(bad, skip_bad)
    keep = [index for index, image in enumerate(decoded) if image is not None]
    labels = torch.tensor([folder.targets[i] for i in keep], dtype=torch.int64)
    split_data = Split(torch.stack([decoded[i] for i in keep]), labels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"images": split_data.images, "labels": split_data.labels, "classes": folder.classes,
                 "bad": [list(item) for item in bad]}, cache)
    return split_data


def _decode_files(paths: list[str]) -> tuple[list[torch.Tensor | None], list[tuple[str, str]]]:
    """Decode JPEG files to uint8 RGB [3, H, W]; unreadable ones are ``None`` plus (path, reason)."""
    # np.fromfile rather than torchvision.io.read_file, which warns once per file since 0.29.
    encoded = [torch.from_numpy(np.fromfile(path, dtype=np.uint8)) for path in paths]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work and
        # the result is cached, so the warning would only be noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            # One call over the whole list: no per-image Python overhead (50k CIFAR images
            # decode in a few seconds on 2 cores).
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB)), []
        except RuntimeError:  # some file is bad: find which, one by one
            pass
        decoded: list[torch.Tensor | None] = []
        bad = []
        for path, data in zip(paths, encoded):
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB))
            except RuntimeError as err:
                decoded.append(None)
                reason = str(err).strip().splitlines()[0] if str(err).strip() else "empty file"
                bad.append((path, f"not a readable JPEG ({reason})"))
        return decoded, bad


def report_bad_files(bad: Sequence[Sequence[str]], skip_bad: bool) -> None:
    """For (path, reason) pairs of bad image files: raise naming the first, or (``skip_bad``) log
    how many were left out."""
    if not bad:
        return
    path, reason = bad[0]
    if not skip_bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise QnnrunError(f"bad image file {path}: {reason}{more}; fix or remove it, or set dataset.skip_bad=true "
                          f"to leave such files out (counted)")
    log.warning("dataset.skip_bad=true: skipped %d bad image file(s), e.g. %s: %s", len(bad), path, reason)
