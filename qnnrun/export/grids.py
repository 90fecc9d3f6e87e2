"""What export needs beside the quantizers' own integer forms (:mod:`qnnrun.quant.grids`): a probe
batch that traces a model, weight codes on a grid, and bit packing."""

from __future__ import annotations

import torch
from torch import Tensor

from qnnrun.data import DataInfo
from qnnrun.errors import QnnrunError
from qnnrun.quant.grids import WeightGrid


def probe_batch(info: DataInfo, device: torch.device, batch: int = 4) -> Tensor:
    """A fixed random batch [batch, C, H, W] (standard normal, seed 0) that traces the model's structure."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, info.in_channels, info.image_size, info.image_size, generator=generator).to(device)


# ---- weight codes ---------------------------------------------------------------------------------


def weight_codes(grid: WeightGrid, quantized: Tensor, name: str) -> Tensor:
    """Codes ``k`` (int64, shaped like ``quantized``) with ``scale * (levels[k] - zero_point)``
    equal to the fake-quant weight ``quantized`` [C, ...]; a row off its grid is an error."""
    w = quantized.detach().double().cpu()
    shape = (-1,) + (1,) * (w.dim() - 1)
    scale = grid.scale.view(shape)
    # Rows whose scale is 0 (a TWN row with no weight above the threshold) are all zero.
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    target = w / safe + grid.zero_point.view(shape).double()
    levels = grid.levels.double()
    middle = (levels[1:] + levels[:-1]) / 2
    codes = torch.bucketize(target, middle)
    rebuilt = scale * (levels[codes] - grid.zero_point.view(shape).double())
    error = ((rebuilt - w).abs() / safe).max().item() if w.numel() else 0.0
    if error > (1e-3 if grid.uniform else 0.0):
        raise QnnrunError(f"the weights of {name} are not on their quantizer's grid (off by {error:.3g} steps): "
                          f"a run whose rows were frozen on a grid that has moved since cannot be exported")
    return codes


# ---- bit packing -----------------------------------------------------------------------------------


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Codes in ``[0, 2^bits)`` (any shape) packed LSB-first into ``ceil(n * bits / 8)`` uint8 bytes."""
    flat = codes.reshape(-1).long().cpu()
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"codes outside [0, 2^{bits})")
    bit_planes = (flat[:, None] >> torch.arange(bits)) & 1  # [n, bits], least significant bit first
    stream = bit_planes.reshape(-1)
    padded = torch.nn.functional.pad(stream, (0, (-stream.numel()) % 8)).view(-1, 8)
    return (padded << torch.arange(8)).sum(1).to(torch.uint8)


def unpack_codes(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of :func:`pack_codes`: the first ``count`` codes (int64, flat)."""
    stream = ((packed.long()[:, None] >> torch.arange(8)) & 1).reshape(-1)[: count * bits]
    return (stream.view(count, bits) << torch.arange(bits)).sum(1)
