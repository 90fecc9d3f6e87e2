"""Pure quantization functions with exact, documented semantics.

Conventions (see ``methods.md``):

* ``round`` is round-half-to-even (``torch.round``), as in PyTorch's own ``fake_quantize_*``.
* The uniform affine scheme is ``q = clamp(round(x / s) + z, qmin, qmax)``, ``x_hat = (q - z) * s``.
  To be bit-exact with ``torch.fake_quantize_per_tensor_affine`` the division is computed as a
  multiplication by ``1 / s`` in float32, which is what PyTorch's kernels do.
* ``scale`` and ``zero_point`` broadcast against ``x``: a 0-d tensor quantizes per tensor, a
  tensor of shape ``[C, 1, ..., 1]`` quantizes per output channel (axis 0).
* Signed ``b``-bit codes span ``[-2^(b-1), 2^(b-1) - 1]`` (full range; ``narrow=True`` drops the most
  negative code so the grid is symmetric), unsigned codes span ``[0, 2^b - 1]``.
  A signed 1-bit quantizer is ``sign`` with ``+1`` for ``x >= 0``, times the scale.

Every quantizer comes with a gradient estimator chosen by name:

* ``"ste"``: straight-through, the backward pass treats the whole quantizer as the identity;
* ``"clipped"``: clipped STE, the gradient passes only where ``x`` lies inside the clipping range
  ``[(qmin - z) * s, (qmax - z) * s]`` (PyTorch's ``fake_quantize`` gradient). For ``sign`` the
  range is ``|x| <= clip`` with ``clip = 1`` by default (the hard-tanh STE of BinaryNet).

The autograd functions save only a boolean mask for backward (one byte per element), never the
input itself.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Estimator = Literal["ste", "clipped"]
ESTIMATORS: tuple[str, ...] = ("ste", "clipped")


def code_range(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Integer code range ``(qmin, qmax)`` of a ``bits``-bit quantizer.

    Signed: ``[-2^(b-1), 2^(b-1) - 1]`` (``[-2^(b-1) + 1, 2^(b-1) - 1]`` when ``narrow``);
    unsigned: ``[0, 2^b - 1]``. A signed 1-bit code is ``{-1, +1}`` (sign).
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"bits={bits} outside 1..16")
    if signed:
        if bits == 1:
            return -1, 1
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _affine(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> tuple[Tensor, Tensor]:
    """Fake-quantized ``x`` and the in-range mask, computed like PyTorch's kernels."""
    inv_scale = 1.0 / scale
    codes = torch.round(x * inv_scale) + zero_point
    inside = (codes >= qmin) & (codes <= qmax)
    return (codes.clamp(qmin, qmax) - zero_point) * scale, inside


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, clipped: bool) -> Tensor:
        out, inside = _affine(x, scale, zero_point, qmin, qmax)
        if clipped:
            ctx.save_for_backward(inside)
        ctx.clipped = clipped
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.clipped:
            (inside,) = ctx.saved_tensors
            grad = grad * inside
        return grad, None, None, None, None, None


class _Sign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, clip: float, clipped: bool) -> Tensor:
        if clipped:
            ctx.save_for_backward(x.abs() <= clip)
        ctx.clipped = clipped
        return torch.where(x >= 0, scale, -scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.clipped:
            (inside,) = ctx.saved_tensors
            grad = grad * inside
        return grad, None, None, None


def fake_quantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor | float,
    qmin: int,
    qmax: int,
    estimator: Estimator = "clipped",
) -> Tensor:
    """Uniform affine fake quantization ``(clamp(round(x / s) + z, qmin, qmax) - z) * s``.

    Args:
        x: any shape, float.
        scale: step size ``s > 0``, broadcastable to ``x`` (0-d: per tensor; ``[C, 1, ...]``: per channel).
        zero_point: integer-valued offset ``z`` (float tensor or number), broadcastable like ``scale``.
        qmin, qmax: integer code range, see :func:`code_range`.
        estimator: ``"ste"`` or ``"clipped"`` (see module docstring).

    Returns:
        Tensor like ``x`` whose values lie on the grid ``(q - z) * s``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: valid are {ESTIMATORS}")
    # Half-precision inputs (autocast) are quantized in float32: bf16 cannot hold x / s exactly.
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    zero_point = torch.as_tensor(zero_point, dtype=compute, device=x.device)
    out = _FakeQuantize.apply(x.to(compute), scale.to(compute), zero_point, qmin, qmax, estimator == "clipped")
    return out.to(x.dtype)


def sign_quantize(
    x: Tensor, scale: Tensor | float = 1.0, estimator: Estimator = "clipped", clip: float = 1.0
) -> Tensor:
    """Binary quantization ``s * sign(x)`` with ``sign(0) = +1``.

    The clipped estimator passes the gradient where ``|x| <= clip`` (the hard-tanh STE of
    BinaryNet for ``clip = 1``); the scale does not move the clipping range, since a weight scale
    such as ``mean |w|`` would otherwise cut the gradient of most weights.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: valid are {ESTIMATORS}")
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    return _Sign.apply(x, scale, clip, estimator == "clipped")


def uniform_quantize(
    x: Tensor,
    scale: Tensor,
    bits: int,
    signed: bool,
    narrow: bool = False,
    estimator: Estimator = "clipped",
) -> Tensor:
    """Symmetric (zero point 0) uniform fake quantization to ``bits`` bits.

    Signed 1-bit is :func:`sign_quantize`; every other case is :func:`fake_quantize` over
    :func:`code_range`. ``scale`` broadcasts against ``x`` as in :func:`fake_quantize`.
    """
    if signed and bits == 1:
        return sign_quantize(x, scale, estimator)
    qmin, qmax = code_range(bits, signed, narrow)
    return fake_quantize(x, scale, 0.0, qmin, qmax, estimator)


def channel_amax(x: Tensor, per_channel: bool) -> Tensor:
    """Largest ``|x|`` per output channel (axis 0), shaped ``[C, 1, ..., 1]``, or per tensor (0-d)."""
    if per_channel:
        return x.detach().abs().flatten(1).amax(dim=1).view(-1, *([1] * (x.dim() - 1)))
    return x.detach().abs().amax()


def channel_mean_abs(x: Tensor, per_channel: bool) -> Tensor:
    """Mean ``|x|`` per output channel (axis 0), shaped ``[C, 1, ..., 1]``, or per tensor (0-d)."""
    if per_channel:
        return x.detach().abs().flatten(1).mean(dim=1).view(-1, *([1] * (x.dim() - 1)))
    return x.detach().abs().mean()


def maxabs_scale(amax: Tensor, bits: int, signed: bool, narrow: bool = False, eps: float = 1e-8) -> Tensor:
    """Scale that maps ``amax`` onto the largest positive code: ``s = amax / qmax``.

    For a signed 1-bit quantizer (sign) a max-abs scale is meaningless; callers use the mean
    ``|x|`` instead (:func:`channel_mean_abs`), which minimises ``||x - s * sign(x)||_2``.
    """
    _, qmax = code_range(bits, signed, narrow)
    return (amax / qmax).clamp_min(eps)
