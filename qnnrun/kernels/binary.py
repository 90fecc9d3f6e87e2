"""Bit-packed binary (XNOR + popcount) arithmetic for W1A1 inference.

Packed layout: the signs of ``x [..., K]`` become a bit stream, element ``i`` in bit ``i % 64`` of
the int64 word ``i // 64`` (``[..., ceil(K / 64)]``); a set bit is ``+1``, a clear bit ``-1``. The
sign convention is the project's (:func:`qnnrun.quant.functional.binary_levels`): ``sign(0) = +1``,
so ``0`` and ``-0.0`` pack as set bits. The padding bits past ``K`` are 0 in every packed tensor,
so they cancel in ``xor`` and the dot product of two packed rows of ``K`` signs is exactly
``K - 2 * popcount(a xor b)``.

Because the layout is a little-endian bit stream, the same tensor viewed as int32 words
(``packed.view(torch.int32)``) holds element ``i`` in bit ``i % 32`` of word ``i // 32``: the GPU
kernel (:mod:`qnnrun.kernels.binary_triton`) uses 32-bit words (the width of the GPU's popcount
instruction), the CPU path 64-bit words (faster than int32 words on the CPU this was measured
on; ``docs/binary_kernels.md``).

The CPU product is ``xor`` + a SWAR popcount + a sum in torch ops, compiled by ``torch.compile``
(inductor fuses the three into one C++ loop vectorized along the output columns, with no
``[M, N, K/64]`` intermediate) or run eagerly in row chunks that bound the intermediate. CUDA
tensors go to the Triton kernel.

:class:`BinaryLinear` runs a trained 1-bit-weight :class:`~qnnrun.quant.layers.QuantLinear` from
packed weights, and :func:`binarize_linear_layers` swaps them into a copy of a model for inference.
Convolutions are not packed (they stay fake-quantized).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qnnrun.errors import QnnrunError
from qnnrun.quant import functional as Q
from qnnrun.quant.layers import QuantLinear
from qnnrun.quant.quantizers import LevelQuantizer

WORD_BITS = 64
# Bound on the eager path's [chunk, words, N] int64 intermediate (about 64 MiB per tensor).
_EAGER_CHUNK_WORDS = 1 << 23
# Bytes of one column block of the transposed right operand in the compiled path (fits L2;
# 64-512 KiB measured alike on a 2.5 MiB-L2 Xeon, docs/binary_kernels.md).
_BLOCK_BYTES = 1 << 17


def packed_words(k: int) -> int:
    """Number of 64-bit words holding ``k`` signs: ``ceil(k / 64)``."""
    return -(-k // WORD_BITS)


def pack_signs(x: Tensor) -> Tensor:
    """Pack the signs of ``x`` [..., K] (any float or int dtype) into int64 words [..., ceil(K / 64)].

    Bit ``i % 64`` of word ``i // 64`` is 1 where ``x[..., i] >= 0`` (``sign = +1``, zeros included),
    0 where ``x[..., i] < 0`` (and NaN); the padding bits of the last word are 0. Same device as
    ``x``; float CUDA tensors are packed by the Triton kernel when triton is installed.
    """
    if x.dim() == 0 or x.shape[-1] == 0:
        raise QnnrunError(f"pack_signs: x of shape {tuple(x.shape)} is not valid: expected [..., K] with K >= 1")
    if x.is_cuda and x.is_floating_point():
        try:  # one fused kernel instead of about 18 elementwise ones
            from qnnrun.kernels.binary_triton import pack_signs_triton
        except ImportError:
            pass
        else:
            return pack_signs_triton(x)
    k = x.shape[-1]
    words = packed_words(k)
    bits = F.pad(x >= 0, (0, words * WORD_BITS - k)).reshape(*x.shape[:-1], words * 8, 8).to(torch.uint8)
    # Shift-or of the 8 bit planes: 1.5x faster than a weighted sum over the last axis (CPU).
    packed_bytes = bits[..., 0].clone(memory_format=torch.contiguous_format)
    for bit in range(1, 8):
        packed_bytes |= bits[..., bit] << bit
    return packed_bytes.view(torch.int64)


def unpack_signs(packed: Tensor, k: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``+-1`` tensor [..., k] of ``packed`` int64 words [..., ceil(k / 64)] (inverse of :func:`pack_signs`)."""
    _check_packed("packed", packed, k)
    packed_bytes = packed.contiguous().view(torch.uint8)
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed_bytes.unsqueeze(-1) >> shifts) & 1
    bits = bits.reshape(*packed.shape[:-1], -1)[..., :k]
    return bits.to(dtype) * 2 - 1


def _check_packed(name: str, packed: Tensor, k: int) -> None:
    if packed.dtype != torch.int64:
        raise QnnrunError(f"{name} has dtype {packed.dtype}: expected torch.int64 words from pack_signs")
    if packed.dim() == 0 or isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise QnnrunError(f"{name} of shape {tuple(packed.shape)} with k={k!r} is not valid: "
                          f"expected [..., ceil(k / 64)] words and an integer k >= 1")
    if packed.shape[-1] != packed_words(k):
        raise QnnrunError(f"k={k} does not fit {name} with {packed.shape[-1]} words per row: valid k are "
                          f"{(packed.shape[-1] - 1) * WORD_BITS + 1}..{packed.shape[-1] * WORD_BITS}")


def popcount64(x: Tensor) -> Tensor:
    """Number of set bits of each int64 element (SWAR: shifts, masks, one multiply), int64, shape of ``x``.

    Arithmetic right shifts of negative words are harmless: every shifted term is masked with a
    constant whose top bit is 0, and the final byte sum (at most 64) leaves bit 63 clear.
    """
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


def _xor_popcount(a: Tensor, b_t: Tensor) -> Tensor:
    """``sum_w popcount(a[m, w] xor b_t[w, n])`` for int64 ``a`` [M, W], ``b_t`` [W, N] -> int64 [M, N].

    The reduction runs over the middle axis, so inductor vectorizes along N (contiguous in
    ``b_t``) with one accumulator per output: no horizontal sums, each ``a`` word a broadcast scalar.
    """
    return popcount64(torch.bitwise_xor(a.unsqueeze(2), b_t.unsqueeze(0))).sum(1)


_compiled_xor_popcount: Callable[[Tensor, Tensor], Tensor] | None = None


def _compiled() -> Callable[[Tensor, Tensor], Tensor]:
    global _compiled_xor_popcount
    if _compiled_xor_popcount is None:
        # dynamic=True: one kernel for every M, N and word count (no recompile per batch size).
        _compiled_xor_popcount = torch.compile(_xor_popcount, dynamic=True)
    return _compiled_xor_popcount


def xnor_matmul_cpu(a: Tensor, b: Tensor, k: int, compile: bool = True) -> Tensor:
    """:func:`xnor_matmul` in torch ops on any device (the CPU path).

    ``compile=True`` runs the ``torch.compile``d kernel over column blocks of ``b`` whose
    transposed words (``_BLOCK_BYTES``) stay in the L2 cache while every row of ``a`` passes.
    The first call per process compiles it (about 30 s on a 2-core CPU with an empty inductor
    cache, about 5 s once inductor's on-disk cache holds it; one more compile for a first 1-row
    operand or K <= 64). ``compile=False`` runs the same ops eagerly in row chunks of bounded
    memory (15-80x slower, docs/binary_kernels.md).
    """
    m, n, words = a.shape[0], b.shape[0], a.shape[1]
    if m == 0 or n == 0:
        return torch.zeros(m, n, dtype=torch.int32, device=a.device)
    if compile:
        kernel = _compiled()
        blocks = -(-n * words * 8 // _BLOCK_BYTES)  # near-equal blocks: no 1-column remainder to recompile for
        counts = torch.cat([kernel(a, block.t().contiguous()) for block in b.tensor_split(blocks)], dim=1)
    else:
        b_t = b.t().contiguous()
        chunk = max(1, _EAGER_CHUNK_WORDS // (n * words))
        counts = torch.cat([_xor_popcount(a[start:start + chunk], b_t) for start in range(0, m, chunk)])
    return (k - 2 * counts).to(torch.int32)


def xnor_matmul(a: Tensor, b: Tensor, k: int, compile: bool = True) -> Tensor:
    """Dot products of packed sign rows: ``sign(A) @ sign(B).T`` as int32 [M, N], exact.

    Args:
        a: int64 words [M, ceil(k / 64)] from :func:`pack_signs` of ``A`` [M, k].
        b: int64 words [N, ceil(k / 64)] from :func:`pack_signs` of ``B`` [N, k].
        k: number of signs per row (the padding bits past ``k`` must be 0, as packed).
        compile: CPU only, see :func:`xnor_matmul_cpu`.

    CUDA tensors run the Triton kernel (:func:`qnnrun.kernels.binary_triton.xnor_matmul_triton`),
    other devices :func:`xnor_matmul_cpu`.
    """
    _check_packed("a", a, k)
    _check_packed("b", b, k)
    if a.dim() != 2 or b.dim() != 2:
        raise QnnrunError(f"xnor_matmul: a {tuple(a.shape)} and b {tuple(b.shape)} are not valid: "
                          f"expected 2-d [rows, words]")
    if a.device != b.device:
        raise QnnrunError(f"xnor_matmul: a on {a.device} and b on {b.device}: expected one device")
    if a.is_cuda:
        try:
            from qnnrun.kernels.binary_triton import xnor_matmul_triton
        except ImportError as error:
            raise QnnrunError(f"xnor_matmul on {a.device} needs triton ({error}): pip install triton, "
                              f"or move the tensors to the CPU") from error
        return xnor_matmul_triton(a, b, k)
    return xnor_matmul_cpu(a, b, k, compile=compile)


def _row_signs_and_scale(weight: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Split a 1-bit weight [N, K] whose rows are ``+-s_n`` into (``+-1`` signs, scale ``s`` [N])."""
    scale = weight.abs().amax(dim=1)
    signs = Q.binary_levels(weight)
    if not torch.equal(signs * scale.unsqueeze(1), weight) or not bool((scale > 0).all()):
        raise QnnrunError(f"layer {name}: its quantized weight is not +-s per row (one magnitude s > 0 per "
                          f"output neuron), so it cannot be packed: valid are 1-bit weights with every channel "
                          f"QUANT or FROZEN")
    return signs, scale


class BinaryLinear(nn.Module):
    """Inference-only linear layer computing with bit-packed ``+-s_n`` weights.

    ``out[..., n] = s_n * sum_i x_i * sign(w_ni) + bias_n`` for input ``x`` [..., in_features] and
    output [..., out_features], in the input's float dtype. With ``binary_input`` the input is
    binarized (``sign``, ``+1`` at 0, as the activation quantizer of ``method=bnn`` does) and the sum
    is :func:`xnor_matmul` on packed words; otherwise
    (a float-input first layer) the input stays float and meets the unpacked ``+-1`` weights in a
    float matmul.

    Buffers: ``weight_packed`` int64 [out_features, ceil(in_features / 64)], ``scale`` float32
    [out_features] (``s_n``; 1 for BNN), ``bias`` float32 [out_features] or None. ``compile`` is
    :func:`xnor_matmul`'s (CPU only).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, binary_input: bool = True,
                 compile: bool = True, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.binary_input = binary_input
        self.compile = compile
        self.register_buffer("weight_packed", torch.zeros(out_features, packed_words(in_features), dtype=torch.int64,
                                                          device=device))
        self.register_buffer("scale", torch.ones(out_features, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_quant(cls, layer: QuantLinear, name: str = "", compile: bool = True) -> BinaryLinear:
        """The packed equivalent of ``layer`` in evaluation mode.

        The weight is ``layer.effective_weight()``, which must be ``+-s_n`` per row; the input
        quantizer must be ``sign`` levels (:class:`~qnnrun.quant.quantizers.LevelQuantizer`, A1) or
        absent / disabled (float input).
        """
        quantizer = layer.input_quant
        binary_input = quantizer is not None and quantizer.enabled
        if binary_input and not (isinstance(quantizer, LevelQuantizer) and quantizer.kind == "sign"):
            raise QnnrunError(f"layer {name}: input quantizer {quantizer!r} cannot run packed: valid are "
                              f"sign levels (LevelQuantizer(kind=sign), A1) or a float input")
        with torch.no_grad():
            signs, scale = _row_signs_and_scale(layer.effective_weight().detach().float(), name)
        binary = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, binary_input=binary_input,
                     compile=compile, device=layer.weight.device)
        binary.weight_packed.copy_(pack_signs(signs))
        binary.scale.copy_(scale)
        if layer.bias is not None:
            binary.bias.copy_(layer.bias.detach())
        return binary

    def weight_signs(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The unpacked ``+-1`` weight [out_features, in_features]."""
        return unpack_signs(self.weight_packed, self.in_features, dtype)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [..., in_features] float -> [..., out_features] in ``x.dtype``."""
        if not self.binary_input:
            weight = self.weight_signs(x.dtype) * self.scale.to(x.dtype).unsqueeze(1)
            return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))
        rows = x.reshape(-1, self.in_features)
        dots = xnor_matmul(pack_signs(rows), self.weight_packed, self.in_features, compile=self.compile)
        out = dots.to(x.dtype) * self.scale.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"binary_input={self.binary_input}")


def binarize_linear_layers(model: nn.Module, compile: bool = True) -> nn.Module:
    """An inference copy of ``model`` (evaluation mode) with every 1-bit-weight QuantLinear packed.

    Each :class:`~qnnrun.quant.layers.QuantLinear` with ``weight_bits == 1`` becomes a
    :class:`BinaryLinear` (:meth:`BinaryLinear.from_quant`); everything else (BatchNorm, other
    layers, convolutions) is kept. ``model`` itself is not changed. ``compile`` is :func:`xnor_matmul`'s.
    """
    packed = copy.deepcopy(model).eval()
    if isinstance(packed, QuantLinear) and packed.weight_bits == 1:
        return BinaryLinear.from_quant(packed, "model", compile).eval()
    replaced = 0
    for name, module in list(packed.named_modules()):
        if isinstance(module, QuantLinear) and module.weight_bits == 1:
            packed.set_submodule(name, BinaryLinear.from_quant(module, name, compile).eval())
            replaced += 1
    if not replaced:
        raise QnnrunError("binarize_linear_layers: the model has no QuantLinear with 1-bit weights: valid are models "
                          "built by a W1 method (e.g. method=bnn)")
    return packed
