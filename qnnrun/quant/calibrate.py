"""MMSE parameters of the affine quantizer (the Neuron-by-Neuron paper's): pure functions.

The affine scheme has unsigned codes ``q = clamp(round(x / s) + z, 0, 2^b - 1)`` and
``x_hat = (q - z) * s`` with an integer zero point ``z`` (see :func:`qnnrun.quant.functional.fake_quantize`).
A clipping range ``[lo, hi]`` with ``lo <= 0 <= hi`` gives ``s = (hi - lo) / (2^b - 1)`` and
``z = round(-lo / s)``, so that 0 is exactly representable. The MMSE problem is solved over the
one-parameter family ``[alpha * lo_x, alpha * hi_x]``, ``0 < alpha <= 1``, where ``[lo_x, hi_x]``
is the data's range widened to contain 0 (``alpha = 1`` is the plain min/max quantizer):

* weights: :func:`mmse_tensor_params`, a grid search over ``alpha`` on the tensor itself, refined by
  a ternary search around the best grid point (per tensor, or per output channel);
* activations: a histogram accumulated over the calibration batches (:func:`histogram_update`),
  whose expected squared error (:func:`histogram_mse`) is minimised by a ternary search over
  ``alpha`` (:func:`mmse_histogram_params`).

The learned-scale methods start their scales with a coarser search of the same kind
(:class:`SquaredErrorSearch`): candidates at fixed multiples of a reference scale, the error of each
summed over the calibration batches, for any fake quantizer (LSQ's ``method.act_init=mse``,
PACT's ``method.alpha_init=mse``, DoReFa's ``method.act_clip=mse``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from qnnrun.quant.functional import code_range, fake_quantize

HISTOGRAM_BINS = 2048
_EPS = 1e-8
MSE_GRID = torch.arange(1, 161) * 0.05
"""Candidate scales of :class:`SquaredErrorSearch`, as multiples of its reference scale: 0.05 to 8.0."""
MSE_SAMPLES = 1 << 18
"""Values of one batch (per row) that :class:`SquaredErrorSearch` scores, evenly strided."""


class SquaredErrorSearch:
    """The scale with the least squared quantization error over several batches, among the
    candidates ``reference * MSE_GRID``; one independent search per row (per channel, or one).

    Args:
        reference: the reference scale per row (any shape with R elements, > 0), usually a rule's
            value on the first batch; :meth:`best` has its shape.
    """

    def __init__(self, reference: Tensor) -> None:
        self.reference = reference.detach().float()
        self.errors = self.reference.new_zeros(self.reference.numel(), len(MSE_GRID))  # [R, grid]

    def add(self, rows: Tensor, quantize: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """Add the squared error of one batch and return :meth:`best`.

        Args:
            rows: [R, n] values of the batch; at most :data:`MSE_SAMPLES` evenly strided values of each
                row are scored.
            quantize: ``quantize(values [R, m], scale [R, 1]) -> [R, m]``, the fake quantizer at the
                candidate scale of each row.
        """
        values = rows.detach().float()
        values = values[:, ::max(1, values.shape[1] // MSE_SAMPLES)]
        candidates = self.reference.reshape(-1, 1) * MSE_GRID.to(values.device)  # [R, grid]
        self.errors += torch.stack([((quantize(values, scale[:, None]) - values) ** 2).sum(1)
                                    for scale in candidates.unbind(1)], dim=1)
        return self.best()

    def best(self) -> Tensor:
        """The least-error candidate of each row, shaped like ``reference``."""
        factor = MSE_GRID.to(self.errors.device)[self.errors.argmin(1)]
        return self.reference * factor.reshape(self.reference.shape)


def affine_qmax(bits: int) -> int:
    """Largest code ``2^b - 1`` of a ``bits``-bit affine quantizer (``bits`` 2..16: one level
    must be 0, so 1 bit would leave a single non-zero level)."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits={bits}: the affine quantizer takes 2..16 bits")
    return code_range(bits, signed=False)[1]


def affine_params(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Scale and integer zero point that map the clipping range ``[lo, hi]`` (``lo <= 0 <= hi``,
    any broadcastable shapes) onto the codes ``0 .. 2^b - 1``."""
    qmax = affine_qmax(bits)
    scale = ((hi - lo) / qmax).clamp_min(_EPS)
    zero_point = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero_point


def affine_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, estimator: str = "clipped") -> Tensor:
    """``(clamp(round(x / s) + z, 0, 2^b - 1) - z) * s`` (see :func:`fake_quantize`)."""
    return fake_quantize(x, scale, zero_point, 0, affine_qmax(bits), estimator)  # type: ignore[arg-type]


def _data_range(x: Tensor, per_channel: bool) -> tuple[Tensor, Tensor]:
    """``(min(x, 0), max(x, 0))`` per output channel (shaped ``[C, 1, ...]``) or per tensor (0-d)."""
    x = x.detach()
    if per_channel:
        flat = x.flatten(1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return flat.amin(1).clamp_max(0).view(shape), flat.amax(1).clamp_min(0).view(shape)
    return x.amin().clamp_max(0), x.amax().clamp_min(0)


def _tensor_error(
    x: Tensor, lo: Tensor, hi: Tensor, alpha: Tensor, bits: int, per_channel: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Smallest squared error over the zero points ``z - 1, z, z + 1`` for the range scaled by
    ``alpha`` (shifting the grid by one step matters at 2-3 bits), with that scale and zero point."""
    qmax = affine_qmax(bits)
    scale, centre = affine_params(alpha * lo, alpha * hi, bits)
    best = (torch.full_like(scale, float("inf")), scale, centre)
    for shift in (0.0, -1.0, 1.0):
        zero_point = (centre + shift).clamp(0, qmax)
        squared = (affine_quantize(x, scale, zero_point, bits) - x).square()
        error = (squared.flatten(1).sum(1) if per_channel else squared.sum()).view(scale.shape)
        better = error < best[0]
        best = (torch.where(better, error, best[0]), scale, torch.where(better, zero_point, best[2]))
    return best


def mmse_tensor_params(
    x: Tensor, bits: int, per_channel: bool = False, grid: int = 50, refine_steps: int = 20
) -> tuple[Tensor, Tensor]:
    """Scale and zero point minimising ``||x - x_hat||_2^2`` over the clipping family (module
    docstring), each range also tried with its zero point moved by one code either way.

    Args:
        x: the tensor to quantize, e.g. a weight [C_out, ...]; per channel means along axis 0.
        bits: 2..16.
        grid: candidates ``alpha = k / grid``, ``k = 1 .. grid``.
        refine_steps: ternary-search iterations inside ``[alpha* - 1/grid, alpha* + 1/grid]``
            around the best grid point ``alpha*``.

    Returns:
        ``(scale, zero_point)``: 0-d per tensor, ``[C, 1, ..., 1]`` per channel.
    """
    x = x.detach().float()
    lo, hi = _data_range(x, per_channel)
    shape = lo.shape
    best_error = torch.full(shape, float("inf"), device=x.device)
    best_alpha = torch.ones(shape, device=x.device)
    best_scale, best_zero = affine_params(lo, hi, bits)

    def keep(alpha: Tensor) -> Tensor:
        nonlocal best_error, best_alpha, best_scale, best_zero
        error, scale, zero_point = _tensor_error(x, lo, hi, alpha, bits, per_channel)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_alpha = torch.where(better, alpha, best_alpha)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero_point, best_zero)
        return error

    for k in range(1, grid + 1):
        keep(torch.full(shape, k / grid, device=x.device))
    left = (best_alpha - 1.0 / grid).clamp_min(0.5 / grid)
    right = (best_alpha + 1.0 / grid).clamp_max(1.0)
    for _ in range(refine_steps):
        third = (right - left) / 3
        m1, m2 = left + third, right - third
        first_smaller = keep(m1) <= keep(m2)
        right = torch.where(first_smaller, m2, right)
        left = torch.where(first_smaller, left, m1)
    return best_scale, best_zero


def histogram_update(
    counts: Tensor | None, lo: float, hi: float, x: Tensor, bins: int = HISTOGRAM_BINS
) -> tuple[Tensor, float, float]:
    """Add the values of ``x`` to a histogram of ``bins`` equal bins over ``[lo, hi]``.

    The range always contains 0 and grows to cover ``x``; when it grows, the old counts are moved
    to the new bins holding their old bin centres. ``counts=None`` starts a new histogram.

    Returns:
        ``(counts [bins] float64, lo, hi)``.
    """
    x = x.detach().flatten().float()
    new_lo = min(lo, float(x.amin().clamp_max(0))) if counts is not None else float(x.amin().clamp_max(0))
    new_hi = max(hi, float(x.amax().clamp_min(0))) if counts is not None else float(x.amax().clamp_min(0))
    if new_hi <= new_lo:  # all zeros: any positive width holds them in bin 0
        new_hi = new_lo + _EPS
    width = (new_hi - new_lo) / bins

    def bin_of(values: Tensor) -> Tensor:
        return ((values - new_lo) / width).floor().clamp(0, bins - 1).long()

    merged = torch.bincount(bin_of(x), minlength=bins).double()
    if counts is not None:
        old_width = (hi - lo) / bins
        centres = lo + (torch.arange(bins, device=counts.device, dtype=torch.float64) + 0.5) * old_width
        merged += torch.bincount(bin_of(centres).to(merged.device), weights=counts.to(merged.device), minlength=bins)
    return merged, new_lo, new_hi


def histogram_mse(counts: Tensor, lo: float, hi: float, clip_lo: Tensor, clip_hi: Tensor, bits: int) -> Tensor:
    """Expected squared quantization error (sum over the histogram's mass, each bin's mass at its
    centre) of the affine quantizer with clipping range ``[clip_lo, clip_hi]``; 0-d float64."""
    bins = counts.numel()
    width = (hi - lo) / bins
    centres = lo + (torch.arange(bins, device=counts.device, dtype=torch.float64) + 0.5) * width
    scale, zero_point = affine_params(clip_lo.double(), clip_hi.double(), bits)
    return (counts * (affine_quantize(centres, scale, zero_point, bits) - centres).square()).sum()


def mmse_histogram_params(counts: Tensor, lo: float, hi: float, bits: int, steps: int = 50) -> tuple[Tensor, Tensor]:
    """Scale and zero point (0-d float32) minimising :func:`histogram_mse` by a ternary search
    over ``alpha`` in ``(0, 1]`` on the clipping range ``[alpha * lo, alpha * hi]``.

    The error is assumed unimodal in ``alpha`` (true up to rounding ripples for the bell- and
    half-bell-shaped distributions of activations); the end point ``alpha = 1`` is kept when it
    is better than the search's result.
    """
    low = torch.tensor(lo, dtype=torch.float64, device=counts.device)
    high = torch.tensor(hi, dtype=torch.float64, device=counts.device)

    def error(alpha: float) -> float:
        return float(histogram_mse(counts, lo, hi, alpha * low, alpha * high, bits))

    left, right = 0.0, 1.0
    for _ in range(steps):
        m1, m2 = left + (right - left) / 3, right - (right - left) / 3
        if error(m1) <= error(m2):
            right = m2
        else:
            left = m1
    alpha = (left + right) / 2
    if error(1.0) < error(alpha):
        alpha = 1.0
    scale, zero_point = affine_params(alpha * low, alpha * high, bits)
    return scale.float(), zero_point.float()
