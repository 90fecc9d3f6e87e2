"""Large image-folder data sets (ImageNet layout), streamed from disk by DataLoader workers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed
import torchvision
from torch.utils.data import DataLoader, Sampler
from torchvision import transforms

from qnnrun.data.loader import ORDER_STREAM, batch_count, epoch_seed, rank_share
from qnnrun.data.sources import report_bad_files
from qnnrun.errors import QnnrunError


def imagefolder_transform(image_size: int, mean: Sequence[float], std: Sequence[float], *,
                          train: bool) -> transforms.Compose:
    """The standard ImageNet pipeline from a PIL image to a normalized float32 [3, S, S] tensor
    (S = ``image_size``): random-resized crop and flip for training, resize to S*256/224 and
    center crop for evaluation."""
    if train:
        geometry = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        geometry = [transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size)]
    return transforms.Compose([*geometry, transforms.ToTensor(), transforms.Normalize(list(mean), list(std))])


class CheckedImageFolder(torchvision.datasets.ImageFolder):
    """An ``ImageFolder`` whose samples are ``(image, label, None)``, or ``(None, label, (path,
    reason))`` for a file that cannot be read: the error reaches the main process as data (not as
    an exception inside a worker), which names the file or skips it."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, tuple[str, str] | None]:
        path, label = self.samples[index]
        try:
            image, label = super().__getitem__(index)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return None, label, (path, f"unreadable image ({reason})")
        return image, label, None


def collate_checked(samples: list[tuple[torch.Tensor | None, int, tuple[str, str] | None]]
                    ) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[str, str]]]:
    """Batch the readable samples of :class:`CheckedImageFolder`: images [B, 3, S, S] (``None``
    when none was readable), labels [B] int64, and the (path, reason) of the unreadable ones."""
    good = [(image, label) for image, label, bad in samples if bad is None]
    images = torch.stack([image for image, _ in good]) if good else None
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    return images, labels, [bad for _, _, bad in samples if bad is not None]


def open_imagefolder(split_dir: Path, transform: transforms.Compose) -> CheckedImageFolder:
    """``CheckedImageFolder(split_dir)``, with missing or empty folders reported as a QnnrunError."""
    if not split_dir.is_dir():
        raise QnnrunError(
            f"image folder not found: looked in {split_dir}; set dataset.root=DIR to a folder "
            f"holding train/<class>/*.jpg and val/<class>/*.jpg (ImageNet layout)"
        )
    try:
        return CheckedImageFolder(str(split_dir), transform=transform)
    except FileNotFoundError as err:
        raise QnnrunError(f"no images under {split_dir}: {err}") from None


class ImageFolderLoader:
    """A ``DataLoader`` over an ``ImageFolder`` that moves each batch to ``device``.

    Yields float32 [B, 3, S, S] normalized images and int64 [B] labels on ``device``. The shuffle
    order and the workers' random seeds come from a generator reseeded from ``(seed, epoch)`` at
    each iteration, so an epoch replays identically when ``num_workers > 0`` (workers are not
    persistent, so they are reseeded every epoch; with 0 workers the random transforms use the
    process-global RNG). An unreadable file is an error naming it, or with ``skip_bad`` is left
    out of its batch and counted in the log at the end of the epoch. After ``shard(rank, world)``
    the workers read only rank ``rank``'s share of each global batch (with ``skip_bad``, a batch in
    which some rank's share is all bad files is left out on every rank: one small all-reduce per batch).
    """

    def __init__(
        self,
        dataset: CheckedImageFolder,
        *,
        batch_size: int,
        device: torch.device | str,
        seed: int,
        shuffle: bool,
        num_workers: int,
        drop_last: bool = False,
        skip_bad: bool = False,
    ) -> None:
        self.skip_bad = skip_bad
        self.device = torch.device(device)
        self.seed = int(seed)
        self.epoch = 0
        self.batch_size = int(batch_size)
        self.num_samples = len(dataset)
        self._generator = torch.Generator()
        self._batches = GlobalBatches(self.num_samples, self.batch_size, shuffle, drop_last, self._generator)
        self._loader = DataLoader(
            dataset,
            batch_sampler=self._batches,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            generator=self._generator,  # the workers' base seed
            collate_fn=collate_checked,
        )

    def shard(self, rank: int, world: int) -> None:
        """Read and yield only rank ``rank``'s share of every global batch, of ``world`` ranks."""
        self._batches.rank, self._batches.world = int(rank), int(world)

    def set_epoch(self, epoch: int) -> None:
        """Make the following iterations replay epoch ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._generator.manual_seed(epoch_seed(self.seed, self.epoch, ORDER_STREAM))
        skipped: list[tuple[str, str]] = []
        for images, labels, bad in self._loader:
            if bad:
                report_bad_files(bad, self.skip_bad)
                skipped += bad
            if self.skip_bad and self._batches.world > 1:
                # A rank whose whole share is bad files has no batch: every rank leaves the batch out (the
                # others would wait for it in the step's collectives for ever).
                empty = torch.tensor([float(images is None)], device=self.device)
                torch.distributed.all_reduce(empty, op=torch.distributed.ReduceOp.MAX)
                if empty.item():
                    continue
            if images is not None:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        report_bad_files(skipped, True)


class GlobalBatches(Sampler[list[int]]):
    """Sample indices of each global batch of an epoch (shuffled by ``generator`` when ``shuffle``),
    or of rank ``rank``'s contiguous share of it when ``world > 1`` (set by the loader's ``shard``).
    A shuffled epoch drops a final batch too short to give every rank 2 samples."""

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool, drop_last: bool,
                 generator: torch.Generator) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator
        self.rank, self.world = 0, 1

    def __len__(self) -> int:
        return batch_count(self.num_samples, self.batch_size, self.drop_last, 2 * self.world if self.shuffle else 1)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.num_samples, generator=self.generator) if self.shuffle else torch.arange(
            self.num_samples)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield rank_share(order[start : start + self.batch_size], self.rank, self.world).tolist()
