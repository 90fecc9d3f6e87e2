"""Pure quantization functions with exact, documented semantics.

Conventions (the project's method notes, ``shared/methods.md`` beside the repository):

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

The autograd functions save a boolean mask for backward (one byte per element), not the input;
in a graph compiled for the CPU the masks are float 0/1 instead (:func:`float_masks`). Two save
their input instead: LSQ's quantizer, whose step gradient needs it, and DoReFa's activation, whose
input follows a ReLU that keeps the same tensor for its own backward anyway.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Estimator = Literal["ste", "clipped"]
ESTIMATORS: tuple[str, ...] = ("clipped", "ste")


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


# The forward passes below build their masks only when a gradient will flow (``needs_input_grad``
# is all false under ``no_grad``: evaluation, and the forward of a replayed layer input).


# Devices on which :class:`_FakeQuantize` takes PyTorch's one-pass kernel (see :func:`_fused_fake_quantize`).
# ``scripts/bench_throughput.py --gpu-kernels`` adds "cpu" to count a GPU's kernels on a CPU.
FUSED_KERNEL_DEVICES: frozenset[str] = frozenset({"cuda"})


def _fused_fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int,
                         qmax: int) -> tuple[Tensor, Tensor] | None:
    """PyTorch's own fake-quantize kernel, output and in-range mask in one pass, where it computes
    exactly :func:`fake_quantize`: float32, eager mode, one scale per tensor or per output channel
    (axis 0; then only with zero point 0: the float zero points the per-channel kernel takes
    without a host sync are added before rounding, which moves ties). ``None`` elsewhere.

    :class:`_FakeQuantize` and :func:`lsq_quantize` take it on a GPU only (``FUSED_KERNEL_DEVICES``).
    There eager element-wise work is bound by memory traffic, and the kernel reads 4 and writes 5
    bytes per element where the composed formula moves 61 over nine kernels. On a CPU the composed
    formula ran faster (ATen's CPU kernel converts every code to int64: 15% slower on a ResNet-20
    W2A2 step). A compiled graph fuses the composed formula itself and gets nothing from an opaque op.
    """
    if x.dtype != torch.float32 or scale.dtype != torch.float32 or torch.compiler.is_compiling():
        return None
    if scale.dim() == 0:
        enabled = _constant(1, (1,), torch.long, x.device)
        zero = (zero_point.to(torch.int32) if isinstance(zero_point, Tensor)
                else _constant(int(zero_point), (), torch.int32, x.device))
        return torch.ops.aten._fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
            x, scale, zero, enabled, qmin, qmax)
    per_channel = x.dim() >= 2 and scale.shape == (x.shape[0],) + (1,) * (x.dim() - 1)
    if per_channel and not isinstance(zero_point, Tensor) and zero_point == 0:
        zero = _constant(0.0, (x.shape[0],), torch.float32, x.device)
        return torch.ops.aten.fake_quantize_per_channel_affine_cachemask(x, scale.reshape(-1), zero, 0, qmin, qmax)
    return None


def float_masks(x: Tensor) -> bool:
    """Whether the estimators' masks of ``x`` are float 0/1 tensors (:func:`at_least`) instead of
    booleans: in a graph being compiled for the CPU.

    Inductor's C++ kernels store a boolean tensor element by element through a generic mask
    conversion: a fused round-clamp kernel over a [128, 16, 32, 32] input took 0.6 ms alone and
    34 ms when it also stored one boolean mask (torch 2.14.1, one AMD EPYC thread), which made a
    compiled ResNet-20 W2A2 ``ste`` step slower than eager. AOT autograd saves for backward the
    smallest tensors backward needs, so a boolean anywhere in a mask's formula would still be
    stored: the float masks hold no boolean at all, and only operations AOT autograd may recompute
    in backward, so the graph can save the input instead (four bytes per element, often saved
    anyway). Eager mode and GPUs keep the one-byte masks.
    """
    return x.device.type == "cpu" and torch.compiler.is_compiling()


def at_least(x: Tensor | float, bound: Tensor | float) -> Tensor:
    """``1.0`` where ``x >= bound``, else ``0.0`` (at least one argument a tensor), without a boolean
    tensor: ``floor(clamp(x - bound, -1, 0)) + 1``. Exact for finite values and infinities (with
    gradual underflow a float difference is zero only where its terms are equal, and negative where
    ``x < bound``); NaN where an argument is NaN."""
    return torch.floor(torch.clamp(x - bound, -1.0, 0.0)) + 1


def within(x: Tensor, low: float | None, high: float) -> Tensor:
    """The estimators' mask of ``low <= x <= high`` (no lower bound where ``low`` is ``None``), shaped
    as ``x``: float 0/1 where :func:`float_masks` says so, else boolean."""
    if float_masks(x):
        upper = at_least(high, x)
        return upper if low is None else at_least(x, low) * upper
    return x <= high if low is None else (x >= low) & (x <= high)


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int, qmax: int,
                clipped: bool) -> Tensor:
        ctx.clipped = clipped and ctx.needs_input_grad[0]
        fused = (_fused_fake_quantize(x, scale, zero_point, qmin, qmax)
                 if x.device.type in FUSED_KERNEL_DEVICES else None)
        if fused is not None:
            out, inside = fused
        else:
            zero_point = device_scalar(zero_point, x.dtype, x.device)
            # As PyTorch's kernels: the division is a multiplication by 1 / s.
            codes = torch.round(x * (1.0 / scale)) + zero_point
            inside = within(codes, qmin, qmax) if ctx.clipped else None
            out = (codes.clamp(qmin, qmax) - zero_point) * scale
        if ctx.clipped:
            ctx.save_for_backward(inside)
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
        ctx.clipped = clipped and ctx.needs_input_grad[0]
        if ctx.clipped:
            ctx.save_for_backward(within(x.abs(), None, clip))
        return torch.where(x >= 0, scale, -scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.clipped:
            (inside,) = ctx.saved_tensors
            grad = grad * inside
        return grad, None, None, None


@functools.cache
def _constant(value: float, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A tensor filled with ``value``, made once per ``(value, shape, dtype, device)`` and shared
    (read only): the quantizers' zero points and flags would otherwise cost a fill kernel per call,
    and an eager step on a GPU runs several hundred of them. Made outside inference mode: a first
    call under ``torch.inference_mode`` must not cache a tensor that autograd cannot save later."""
    with torch.inference_mode(False):
        return torch.full(shape, value, dtype=dtype, device=device)


def device_scalar(value: Tensor | float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``value`` as a tensor of ``dtype`` on ``device``; a Python number becomes a 0-d tensor
    (shared, read only).

    ``torch.as_tensor(number, device=cuda)`` copies from host memory and synchronises the stream:
    one host sync per quantizer call, which made every quantized layer stall the training loop on a
    GPU. ``torch.full`` fills on the device instead, once per value.
    """
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype)
    if torch.compiler.is_compiling():  # a constant of the graph (dynamo would trace through the cache)
        return torch.full((), float(value), dtype=dtype, device=device)
    return _constant(float(value), (), dtype, device)


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
    if isinstance(zero_point, Tensor):
        zero_point = zero_point.to(compute)
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
    scale = device_scalar(scale, x.dtype, x.device)
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
    """Largest ``|x|`` per output channel (axis 0), shaped ``[C, 1, ..., 1]``, or per tensor (0-d).

    ``max(-min x, max x)`` from one ``aminmax`` reduction, exactly ``max |x|``: ``abs`` then
    ``amax`` writes and rereads a copy of ``x``, an activation-sized pass per call in eager mode.
    (The infinity norm, one pass on a GPU too, is 10x slower than either on a CPU.)
    """
    if per_channel:
        low, high = torch.aminmax(x.detach().flatten(1), dim=1)
        return torch.maximum(-low, high).view(-1, *([1] * (x.dim() - 1)))
    low, high = torch.aminmax(x.detach())
    return torch.maximum(-low, high)


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


# ---- Ternary weights (TWN) and row errors (SQ) --------------------------------------------------
# The levels come from :func:`ternary_levels` / :func:`ternary_threshold` below (shared with AQE).


def twn_threshold_and_scale(x: Tensor, threshold_ratio: float = 0.7,
                            centered: bool = False) -> tuple[Tensor, Tensor]:
    """TWN parameters of a weight ``x`` [C, ...]: one threshold per tensor, one scale per row.

    ``delta = threshold_ratio * mean |x|`` (0-d), or with ``centered`` ``threshold_ratio *
    mean |x - mean(x)|``, as the SQ authors' Caffe layers compute it (``TernaryConvolutionLayer::
    Forward_gpu``: ``0.7 / N * (W - mean(W))`` summed by ``caffe_gpu_asum``); the threshold is then
    compared with the uncentred weights in both cases. ``alpha_i`` = mean of ``|x|`` over the entries
    of row ``i`` with ``|x| > delta``, shaped ``[C, 1, ..., 1]`` (0 for a row with no such entry).
    """
    if centered:
        detached = x.detach()
        delta = threshold_ratio * (detached - detached.mean()).abs().mean()
    else:
        delta = ternary_threshold(x, threshold_ratio)
    rows = x.detach().abs().flatten(1)
    above = rows > delta
    alpha = (rows * above).sum(1) / above.sum(1).clamp_min(1)
    return delta, alpha.view(-1, *([1] * (x.dim() - 1)))


def ternary_quantize(
    x: Tensor, threshold: Tensor, scale: Tensor, estimator: Estimator = "ste", clip: float = 1.0
) -> Tensor:
    """Ternary quantization ``scale * t`` with ``t = +1`` where ``x > threshold``, ``-1`` where
    ``x < -threshold``, else 0.

    ``threshold`` and ``scale`` broadcast against ``x``. The clipped estimator passes the gradient
    where ``|x| <= clip``, as :func:`sign_quantize` does; ``"ste"`` passes it everywhere.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: valid are {ESTIMATORS}")
    with torch.no_grad():
        value = ternary_levels(x, threshold) * scale
    if estimator == "clipped":
        return clipped_ste(x, value, clip)
    return _StraightThrough.apply(x, value)


def row_relative_error(x: Tensor, quantized: Tensor) -> Tensor:
    """Relative L1 quantization error of each row (axis 0): ``|x_i - q_i|_1 / |x_i|_1``, shape [C].

    A row that is all zero has error 0 (its quantization loses nothing).
    """
    x, quantized = x.detach().flatten(1), quantized.detach().flatten(1)
    norm = x.abs().sum(1)
    error = (x - quantized).abs().sum(1)
    return torch.where(norm > 0, error / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))


# ---- k-quantile (UNIQ) -----------------------------------------------------------------------


class _StraightThrough(torch.autograd.Function):
    """Returns ``value`` forward and passes the gradient to ``x`` unchanged (nothing is saved).

    The identity-gradient twin of :func:`clipped_ste` (used by TWN and k-quantile weights)."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor) -> Tensor:
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def gaussian_fit(x: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation (0-d, detached) of the normal distribution fitted to all of ``x``."""
    x = x.detach()
    return x.mean(), x.std().clamp_min(eps)


def kquantile_quantize(x: Tensor, bits: int, mean: Tensor, std: Tensor) -> Tensor:
    """k-quantile quantization of ``x`` under ``N(mean, std^2)`` with ``k = 2^bits`` equiprobable bins.

    ``u = Phi((x - mean) / std)`` is moved to its bin centre ``(floor(u k) + 0.5) / k`` and mapped
    back, ``mean + std * Phi^-1(centre)``: each value becomes the median of its bin. Backward is
    the straight-through estimator (identity).
    """
    k = 2**bits
    with torch.no_grad():
        uniform = torch.special.ndtr((x - mean) / std)
        centre = ((uniform * k).floor().clamp(0, k - 1) + 0.5) / k
        value = mean + std * torch.special.ndtri(centre)
    return _StraightThrough.apply(x, value.to(x.dtype))


NOISE_GRADIENTS: tuple[str, ...] = ("identity", "through")


def kquantile_noise(x: Tensor, bits: int, mean: Tensor, std: Tensor, noise: Tensor,
                    gradient: str = "identity") -> Tensor:
    """UNIQ's training-time stand-in for :func:`kquantile_quantize`: noise in the uniform domain.

    ``u = Phi((x - mean) / std)``, ``u~ = clamp(u + noise, 1/(2k), 1 - 1/(2k))``,
    result ``mean + std * Phi^-1(u~)``. ``noise`` (like ``x``) should be ``U[-1/(2k), 1/(2k)]``, the
    spread of ``u`` around its bin centre; the clamp keeps the result inside the range of the
    quantization levels (``Phi^-1`` is infinite at 0 and 1). ``mean`` and ``std`` are constants.

    ``gradient``: ``"identity"`` (default) passes the gradient to ``x`` unchanged, as UNIQ's code
    does: its ``add_noise`` writes the noisy copy into the weight's ``.data`` for the forward pass
    and ``restore_weights`` puts the float weight back before the update, so autograd never sees
    ``Phi``, ``Phi^-1`` or the clamp. ``"through"`` differentiates the formula (zero gradient where
    the clamp is active).
    """
    if gradient not in NOISE_GRADIENTS:
        raise ValueError(f"gradient={gradient!r}: valid are {NOISE_GRADIENTS}")
    k = 2**bits

    def noisy(w: Tensor) -> Tensor:
        uniform = torch.special.ndtr((w - mean) / std) + noise
        return mean + std * torch.special.ndtri(uniform.clamp(0.5 / k, 1 - 0.5 / k))

    if gradient == "through":
        return noisy(x)
    return _StraightThrough.apply(x, noisy(x.detach()).to(x.dtype))


# ---- Level quantizers of the binary / low-bit estimators (BNN, QNN, AQE) ---------------------
# These quantizers have no scale: latent weights are kept in [-1, 1] by clipping after every
# optimizer step and activations come out of a hard-tanh, so the levels live on [-1, 1] and
# BatchNorm supplies the scale. The value functions below are pure (no autograd); the gradient
# estimator is :func:`clipped_ste`, which any of them can be plugged into.


class _ClippedSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, clip: float, grad_scale: float) -> Tensor:
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(within(x.abs(), None, clip))
        ctx.grad_scale = grad_scale
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside * ctx.grad_scale, None, None, None


def clipped_ste(x: Tensor, value: Tensor, clip: float = 1.0, grad_scale: float = 1.0) -> Tensor:
    """Return ``value`` in the forward pass; backward ``dL/dx = grad_scale * dL/dy * 1{|x| <= clip}``.

    ``value`` (shaped like ``x``) is any function of ``x`` computed without autograd; only the
    boolean mask is saved. ``grad_scale = 1`` is the clipped STE of BinaryNet / QNN,
    ``grad_scale = 2 * alpha`` the asymptotic-quantized estimator of AQE.
    """
    return _ClippedSTE.apply(x, value.detach(), clip, grad_scale)


def binary_levels(x: Tensor) -> Tensor:
    """``sign(x)`` in ``{-1, +1}`` with ``sign(0) = +1``, as BinaryNet's ``binary_tanh_unit``.

    Activations stay binary under dropout too: a quantized layer drops its input after quantizing
    it (:func:`qnnrun.quant.convert.convert`), so a dropped unit is a 0 the sign never sees.
    """
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def ternary_levels(x: Tensor, delta: Tensor | float) -> Tensor:
    """Ternary ``{-1, 0, +1}``: ``sign(x)`` where ``|x| > delta``, else 0 (``delta`` broadcasts)."""
    return torch.where(x.abs() > delta, torch.sign(x), 0.0)


def ternary_threshold(x: Tensor, factor: float = 0.7) -> Tensor:
    """TWN threshold ``factor * mean|x|`` over the whole tensor (0-d)."""
    return factor * x.detach().abs().mean()


def pow2_magnitudes(bits: int) -> int:
    """Number of non-zero magnitudes ``2^0, 2^-1, ...`` of a signed ``bits``-bit power-of-two code.

    One bit holds the sign and one of the ``2^(bits-1)`` remaining codes is zero, so
    ``2^(bits-1) - 1`` magnitudes: 3 bits -> ``{1, 1/2, 1/4}``, 4 bits -> ``{1, ..., 1/64}``.
    """
    if bits < 2:
        raise ValueError(f"bits={bits}: a power-of-two code needs at least 2 bits")
    return 2 ** (bits - 1) - 1


def pow2_levels(x: Tensor, bits: int) -> Tensor:
    """Logarithmic quantization ``sign(x) * 2^round(log2|x|)`` onto ``{0, +-2^-p : p = 0..P-1}``.

    ``P = pow2_magnitudes(bits)``. The exponent is rounded in the log domain (half to even) and
    clipped to ``[-(P-1), 0]``, so ``|x| >= 1`` maps to 1; values below half the smallest magnitude
    ``2^-(P-1) / 2`` map to 0 (the linear midpoint between 0 and the smallest level).
    Multiplying by any level is a shift, which is the point of these codes.
    """
    smallest = -(pow2_magnitudes(bits) - 1)
    magnitude = x.abs()
    exponent = torch.round(torch.log2(magnitude.clamp_min(torch.finfo(x.dtype).tiny))).clamp(smallest, 0)
    levels = torch.sign(x) * torch.exp2(exponent)
    return torch.where(magnitude < 2.0 ** (smallest - 1), torch.zeros_like(x), levels)


def linear_levels(x: Tensor, bits: int) -> Tensor:
    """QNN's linear quantization ``clamp(round(x / step), -2^(b-1), 2^(b-1) - 1) * step``.

    ``step = 2^(1-b)``, so the ``2^b`` levels cover ``[-1, 1 - step]`` (QNN's ``round(x * 2^(b-1)) /
    2^(b-1)``). Rounding is half to even; 1 bit is :func:`binary_levels`.
    """
    if bits == 1:
        return binary_levels(x)
    scale = 2.0 ** (bits - 1)
    return torch.round(x * scale).clamp(-scale, scale - 1) / scale


def power_of_two(x: Tensor) -> Tensor:
    """``AP2(x) = sign(x) * 2^round(log2|x|)``, the nearest power of two in the log domain (0 -> 0).

    BinaryNet's shift-based BatchNorm and AdaMax multiply by ``AP2`` of a value instead of the value.
    """
    magnitude = x.abs().clamp_min(torch.finfo(x.dtype).tiny)
    return torch.sign(x) * torch.exp2(torch.round(torch.log2(magnitude)))


def power_of_two_ste(x: Tensor) -> Tensor:
    """:func:`power_of_two` in the forward pass, identity in the backward pass."""
    return x + (power_of_two(x.detach()) - x).detach()


def quantize_gradient(grad: Tensor, bits: int, noise: Tensor) -> Tensor:
    """Stochastic ``bits``-bit quantization of a gradient with a per-tensor max-abs scale.

    ``s = max|g| / (2^(b-1) - 1)``, ``g_q = floor(g / s + noise) * s`` with ``noise ~ U[0, 1)``
    shaped like ``grad`` (unbiased: ``E[g_q] = g``); codes span ``[-(2^(b-1) - 1), 2^(b-1) - 1]``.
    """
    levels = 2 ** (bits - 1) - 1
    scale = grad.abs().amax().clamp_min(1e-30) / levels
    return torch.floor(grad / scale + noise).clamp(-levels, levels) * scale


class _QuantizeBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, quantize: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.quantize = quantize
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.quantize(grad), None


def quantize_backward(x: Tensor, quantize: Callable[[Tensor], Tensor]) -> Tensor:
    """Identity in the forward pass; the gradient flowing back through it becomes ``quantize(grad)``."""
    return _QuantizeBackward.apply(x, quantize)


def gradient_quantizer(x: Tensor, bits: int) -> Tensor:
    """Identity in the forward pass; the gradient flowing back through it is quantized to ``bits``
    bits by :func:`quantize_gradient` (QNN's low-bit gradients)."""
    return quantize_backward(x, lambda grad: quantize_gradient(grad, bits, torch.rand_like(grad)))


# ---- Learned step size (LSQ, LSQ+) ------------------------------------------------------------
# Unlike the functions above, the LSQ function saves its input: the step gradient needs
# round(x/s) - x/s for every element, which a mask cannot hold. The input is alive anyway (a
# weight parameter, or the output of the ReLU before the layer, which autograd already keeps), so
# saving it allocates nothing, where a saved error tensor would be a new float per element.


def lsq_grad_scale(values_per_step: int, qmax: int) -> float:
    """LSQ's gradient scale ``g = 1 / sqrt(N * Qp)``: ``N`` values share one step, ``Qp`` is the
    largest positive code (``qmax``; 1 for a signed 1-bit code)."""
    return (max(1, values_per_step) * max(1, qmax)) ** -0.5


def _lsq_codes(x: Tensor, step: Tensor, offset: Tensor | None, qmin: int, qmax: int,
               binary: bool) -> tuple[Tensor, Tensor]:
    """Normalised input ``v = (x - offset) / s`` (as ``x * (1/s)``, like PyTorch's kernels) and its codes."""
    v = (x if offset is None else x - offset) * (1.0 / step)
    codes = torch.where(v >= 0, 1.0, -1.0).to(x.dtype) if binary else torch.round(v).clamp(qmin, qmax)
    return v, codes


class _LsqQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, offset: Tensor | None, qmin: int, qmax: int, grad_scale: float,
                binary: bool) -> Tensor:
        ctx.save_for_backward(x, step, offset)
        ctx.qmin, ctx.qmax, ctx.grad_scale, ctx.binary = qmin, qmax, grad_scale, binary
        if offset is None and not binary and x.device.type in FUSED_KERNEL_DEVICES:
            # clamp(round(v)) * s is round(clamp(v)) * s for integer bounds: fake_quantize's value.
            fused = _fused_fake_quantize(x, step, 0, qmin, qmax)
            if fused is not None:
                return fused[0]
        _, codes = _lsq_codes(x, step, offset, qmin, qmax, binary)
        return codes * step if offset is None else codes * step + offset

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, step, offset = ctx.saved_tensors
        v, codes = _lsq_codes(x, step, offset, ctx.qmin, ctx.qmax, ctx.binary)
        # Strictly inside the clamp range (LSQ eq. 3); for sign, the hard-tanh range |v| < 1.
        inside = v.abs() < 1 if ctx.binary else (v > ctx.qmin) & (v < ctx.qmax)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_step = grad_offset = None
        if ctx.needs_input_grad[1]:
            # d x_hat / d s: round(v) - v inside, the clamp code (-Qn or Qp) outside. (addcmul: one
            # pass, and exactly codes - v * inside, since a product by 0 or 1 does not round.)
            grad_step = (grad * torch.addcmul(codes, v, inside, value=-1)).sum_to_size(step.shape) * ctx.grad_scale
        if ctx.needs_input_grad[2]:
            # d x_hat / d offset: 0 inside (round passes the shift through), 1 outside.
            grad_offset = (grad * ~inside).sum_to_size(offset.shape) * ctx.grad_scale
        return grad_x, grad_step, grad_offset, None, None, None, None


def lsq_quantize(
    x: Tensor,
    step: Tensor,
    qmin: int,
    qmax: int,
    grad_scale: float,
    offset: Tensor | None = None,
) -> Tensor:
    """LSQ fake quantization ``round(clamp((x - offset) / s, qmin, qmax)) * s + offset``.

    Args:
        x: any shape, float.
        step: the learned step ``s > 0``, broadcastable to ``x`` (0-d per tensor, ``[C, 1, ...]``
            per output channel).
        qmin, qmax: integer code range ``[-Qn, Qp]`` (:func:`code_range`). A signed 1-bit range
            ``(-1, 1)`` is ``s * sign(x - offset)`` with ``sign(0) = +1``.
        grad_scale: ``g`` of :func:`lsq_grad_scale`, multiplied into the step (and offset) gradient.
        offset: LSQ+'s learned offset ``beta`` (0-d), or ``None`` for none.

    Gradients (Esser et al., ICLR 2020, eq. 3), with ``v = (x - offset) / s``: to ``x`` 1 where
    ``qmin < v < qmax``, else 0; to ``s``, times ``g``: ``round(v) - v`` inside, ``qmin`` below and
    ``qmax`` above; to ``offset``, times ``g``: 0 inside, 1 outside (LSQ+, Bhalgat et al. 2020).
    """
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    beta = offset.to(compute) if offset is not None else None
    binary = (qmin, qmax) == (-1, 1)
    out = _LsqQuantize.apply(x.to(compute), step.to(compute), beta, qmin, qmax, grad_scale, binary)
    return out.to(x.dtype)


# ---- DoReFa and PACT ------------------------------------------------------------------------
# DoReFa (Zhou et al. 2016) and PACT (Choi et al. 2018) quantize values in [0, 1] to k bits with
# quantize_k(x) = round((2^k - 1) x) / (2^k - 1) and pass the gradient straight through the round.


def quantize_unit(x: Tensor, bits: int) -> Tensor:
    """DoReFa's ``quantize_k``: ``round((2^k - 1) x) / (2^k - 1)`` for ``x`` in ``[0, 1]``; the
    backward pass is the identity (STE through the round only)."""
    levels = 2**bits - 1
    return _StraightThrough.apply(x, torch.round(x.detach() * levels) / levels)


def dorefa_weight_unit(w: Tensor) -> Tensor:
    """DoReFa's weight normalisation ``tanh(w) / (2 max|tanh(w)|) + 1/2``, onto ``[0, 1]``.

    Smooth (the max over the whole tensor included), so autograd differentiates it exactly.
    """
    squashed = torch.tanh(w)
    return squashed / (2 * squashed.abs().amax().clamp_min(1e-12)) + 0.5


def dorefa_weight(w: Tensor, bits: int) -> Tensor:
    """DoReFa weights: ``2 quantize_k(dorefa_weight_unit(w)) - 1`` in ``[-1, 1]``.

    One bit is ``sign(w) * mean|w|`` with the mean held constant in the backward pass and an
    unclipped STE through the sign, as in the DoReFa code.
    """
    if bits == 1:
        return sign_quantize(w, w.detach().abs().mean(), "ste")
    return 2 * quantize_unit(dorefa_weight_unit(w), bits) - 1


class _UnitIntervalSTE(torch.autograd.Function):
    """Returns ``value`` forward; backward passes the gradient to ``x`` where ``0 <= x <= 1``. Saves
    ``x`` (after a ReLU, the tensor autograd saves anyway) and builds the mask in backward."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor) -> Tensor:
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return grad * within(x, 0.0, 1.0), None


def dorefa_activation(x: Tensor, bits: int) -> Tensor:
    """DoReFa activations ``quantize_k(clamp(x, 0, 1))``: gradient 1 on ``[0, 1]``, ends included as in
    the DoReFa code (TensorFlow's ``clip_by_value``; torch's ``clamp`` passes neither end), 0 outside."""
    levels = 2**bits - 1
    return _UnitIntervalSTE.apply(x, torch.round(x.detach().clamp(0.0, 1.0) * levels) / levels)


def dorefa_quantize_gradient(grad: Tensor, bits: int, noise: Tensor) -> Tensor:
    """DoReFa's stochastic ``bits``-bit gradient quantization with a per-sample max-abs scale.

    ``m = max|g|`` over every axis but the first (the batch), and
    ``g_q = 2 m (quantize_k(clamp(g / (2m) + 1/2 + noise, 0, 1)) - 1/2)`` with ``noise`` shaped
    like ``grad`` and drawn from ``U[-1/2, 1/2] / (2^k - 1)`` (the paper's ``N(k)``).
    """
    dims = tuple(range(1, grad.dim()))
    peak = grad.abs().amax(dim=dims, keepdim=True) if dims else grad.abs().amax()
    levels = 2**bits - 1
    unit = (grad / (2 * peak.clamp_min(torch.finfo(grad.dtype).tiny)) + 0.5 + noise).clamp(0.0, 1.0)
    # An all-zero sample stays exactly zero (the grid has no zero level: 2^k - 1 is odd).
    return 2 * peak * (torch.round(unit * levels) / levels - 0.5)


def dorefa_gradient_quantizer(x: Tensor, bits: int) -> Tensor:
    """Identity forward; the gradient flowing back through it is quantized by
    :func:`dorefa_quantize_gradient` with fresh noise."""
    return quantize_backward(
        x, lambda grad: dorefa_quantize_gradient(grad, bits, (torch.rand_like(grad) - 0.5) / (2**bits - 1)))


class _Pact(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, bits: int, signed: bool) -> Tensor:
        levels = code_range(bits, signed)[1]  # signed: 2^(k-1) - 1 a side (pact_quantize: k >= 2)
        lower = -alpha if signed else torch.zeros_like(alpha)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            if float_masks(x):
                ctx.save_for_backward(at_least(x, alpha), at_least(lower, x) if signed else 1.0 - at_least(x, 0.0))
            else:
                ctx.save_for_backward(x >= alpha, (x <= lower) if signed else (x < 0))
        ctx.signed = signed
        clipped = torch.clamp(x, lower, alpha)  # min(max(x, lower), alpha) in one pass
        return torch.round(clipped * (levels / alpha)) * (alpha / levels)

    @staticmethod
    def backward(ctx, grad: Tensor):
        above, below = ctx.saved_tensors
        if ctx.needs_input_grad[0]:
            grad_x = grad * (~(above | below) if above.dtype == torch.bool else 1.0 - above - below)
        else:
            grad_x = None
        if not ctx.needs_input_grad[1]:  # a fixed level (DoReFa's act_clip): no reduction over the input
            return grad_x, None, None, None
        grad_alpha = (grad * above).sum()
        if ctx.signed:
            grad_alpha = grad_alpha - (grad * below).sum()
        return grad_x, grad_alpha.reshape(()), None, None


def pact_quantize(x: Tensor, alpha: Tensor, bits: int, signed: bool = False) -> Tensor:
    """PACT: ``y = clamp(x, 0, alpha)`` quantized to ``round(y (2^k - 1) / alpha) alpha / (2^k - 1)``.

    Args:
        x: any shape, float.
        alpha: the learned clipping level (0-d, > 0).
        bits: 1 to 16 (2 to 16 when ``signed``).
        signed: the symmetric variant ``clamp(x, -alpha, alpha)`` on ``2^(k-1) - 1`` levels each
            side, for inputs with negative values (a normalised image).

    Backward (Choi et al. 2018, eq. 3; masks only are saved): to ``x`` 1 where ``0 <= x < alpha``
    (``-alpha < x < alpha`` signed), else 0; to ``alpha`` the sum of the gradient where
    ``x >= alpha`` (minus where ``x <= -alpha``, signed), nothing from the rounding inside.
    """
    if signed and bits < 2:
        raise ValueError("signed PACT needs at least 2 bits")
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    return _Pact.apply(x.to(compute), alpha.to(compute), bits, signed).to(x.dtype)
