"""Batched, on-device data augmentation for image tensors held as whole batches.

Random numbers are drawn on the CPU from an explicit ``torch.Generator`` and only then moved to
the batch's device, so a given generator state yields the same augmented batch on any device.
All functions work on any dtype (the loaders call them on uint8 pixels, before normalization,
so that padding is black as with ``torchvision.transforms.RandomCrop(padding=...)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_offsets(
    n: int, padding: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw per-sample crop offsets for :func:`random_crop`.

    Returns ``(dy, dx)``, each int64 [n] in ``[0, 2*padding]`` on ``device``: the top-left corner
    of each crop in the padded image. ``dy`` is drawn before ``dx`` from ``generator`` (CPU).
    """
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    dy, dx = offsets.to(device)
    return dy, dx


def crop_at(
    padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Crop a different window out of every image of a batch, as one gather.

    ``padded`` is [B, C, Hp, Wp]; ``dy``/``dx`` are int64 [B] on the same device; ``size`` is
    ``(H, W)``. Returns [B, C, H, W] with ``out[i] = padded[i, :, dy[i]:dy[i]+H, dx[i]:dx[i]+W]``.
    """
    b, c = padded.shape[:2]
    h, w = size
    device = padded.device
    rows = (dy.view(b, 1) + torch.arange(h, device=device)).view(b, 1, h, 1)
    cols = (dx.view(b, 1) + torch.arange(w, device=device)).view(b, 1, 1, w)
    samples = torch.arange(b, device=device).view(b, 1, 1, 1)
    channels = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[samples, channels, rows, cols]


def random_crop(batch: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad a batch [B, C, H, W] by ``padding`` pixels per side and crop each image back
    to H x W at offsets from :func:`crop_offsets` (same shape and dtype as ``batch``)."""
    dy, dx = crop_offsets(batch.shape[0], padding, generator, batch.device)
    padded = F.pad(batch, (padding, padding, padding, padding))
    return crop_at(padded, dy, dx, (batch.shape[-2], batch.shape[-1]))


def flip_mask(n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw which of ``n`` samples :func:`random_hflip` flips: bool [n] on ``device``, each True
    with probability 1/2, drawn from ``generator`` (CPU)."""
    return (torch.rand(n, generator=generator) < 0.5).to(device)


def random_hflip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror left-right the samples of a batch [B, C, H, W] selected by :func:`flip_mask`."""
    mask = flip_mask(batch.shape[0], generator, batch.device)
    return torch.where(mask.view(-1, 1, 1, 1), batch.flip(-1), batch)
