"""Whole-batch loader over a small data set held as one uint8 tensor on the training device."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from qnnrun.data.augment import random_crop, random_hflip
from qnnrun.errors import QnnrunError

# Independent random streams per epoch, so that turning augmentation on or off leaves the
# sample order unchanged.
ORDER_STREAM = 0
AUGMENT_STREAM = 1


class Loader(Protocol):
    """What the training engine iterates: a re-iterable source of device batches.

    ``__iter__`` yields ``(images, labels)``: float32 [B, C, H, W] normalized, and int64 [B], both
    on the training device. ``__len__`` is the number of batches per epoch. ``set_epoch`` fixes
    which epoch the next iterations replay.
    """

    num_samples: int
    batch_size: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def shard(self, rank: int, world: int) -> None: ...


def batch_count(num_samples: int, batch_size: int, drop_last: bool, min_last: int) -> int:
    """Batches per epoch: the full ones, plus the final short one unless ``drop_last`` or it holds
    fewer than ``min_last`` samples."""
    full, rest = divmod(num_samples, batch_size)
    return full + int(rest > 0 and not drop_last and rest >= min_last)


def rank_share(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous share of a global ``batch`` (first dimension) split ``world`` ways."""
    return batch if world == 1 else batch.tensor_split(world)[rank]


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A 64-bit seed derived from ``(seed, epoch, stream)`` alone.

    ``SeedSequence`` hashes the triple, so neighbouring seeds or epochs give unrelated streams.
    """
    entropy = [seed % 2**64, epoch, stream]  # SeedSequence needs non-negative words
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator seeded by :func:`epoch_seed`, independent of the global RNGs."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, stream))


class TensorLoader:
    """Yield normalized (and optionally augmented) batches from uint8 images kept on ``device``.

    ``images`` is uint8 [N, C, H, W] with pixel values 0..255, ``labels`` int64 [N]; both are
    moved to ``device`` once, here. Each iteration is one epoch: the order is a permutation drawn
    from ``(seed, epoch)`` when ``shuffle`` (else the stored order), each batch is gathered on the
    device, augmented there when ``augment`` (random crop after zero padding ``crop_padding``
    pixels, random horizontal flip when ``hflip``), scaled to [0, 1] and normalized per channel
    with ``mean``/``std`` (in [0, 1] units). ``drop_last`` drops the final short batch.

    After ``shard(rank, world)`` (one run on several processes) every iteration still draws and
    augments the same global batches, and yields rank ``rank``'s contiguous share of each: the
    ranks together see exactly what one process sees. A shuffled (training) loader then also
    drops a final batch too short to give every rank 2 samples (BatchNorm needs 2).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
        seed: int,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: bool = False,
        crop_padding: int = 0,
        hflip: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [N={images.shape[0]}], got {tuple(labels.shape)}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise QnnrunError(
                f"dataset.mean/std need {channels} values (one per channel), got {list(mean)} / {list(std)}"
            )
        if batch_size < 1:
            raise QnnrunError(f"batch size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = int(batch_size)
        self.num_samples = int(images.shape[0])
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.crop_padding = int(crop_padding)
        self.hflip = hflip
        self.epoch = 0
        self.rank, self.world = 0, 1
        # Folding the 1/255 scale into the affine map saves one pass over each batch.
        self._scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, -1, 1, 1).to(self.device)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, -1, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Make the following iterations replay epoch ``epoch`` (order and augmentation)."""
        self.epoch = int(epoch)

    def shard(self, rank: int, world: int) -> None:
        """Yield rank ``rank``'s share of every global batch, of ``world`` ranks."""
        self.rank, self.world = int(rank), int(world)

    def __len__(self) -> int:
        return batch_count(self.num_samples, self.batch_size, self.drop_last, 2 * self.world if self.shuffle else 1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle:
            order_gen = epoch_generator(self.seed, self.epoch, ORDER_STREAM)
            order = torch.randperm(self.num_samples, generator=order_gen).to(self.device)
        else:
            order = torch.arange(self.num_samples, device=self.device)
        augment_gen = epoch_generator(self.seed, self.epoch, AUGMENT_STREAM) if self.augment else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.images.index_select(0, index)
            if augment_gen is not None:
                if self.crop_padding > 0:
                    images = random_crop(images, self.crop_padding, augment_gen)
                if self.hflip:
                    images = random_hflip(images, augment_gen)
            images = rank_share(images, self.rank, self.world).float().mul_(self._scale).add_(self._shift)
            yield images, self.labels.index_select(0, rank_share(index, self.rank, self.world))
