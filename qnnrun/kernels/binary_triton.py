"""Triton XNOR + popcount GEMM on 32-bit words and sign packing (the GPU paths of
:func:`qnnrun.kernels.binary.xnor_matmul` and :func:`~qnnrun.kernels.binary.pack_signs`).

Each program computes a ``[BLOCK_M, BLOCK_N]`` tile of ``K - 2 * sum_w popcount(a[m, w] xor b[n, w])``
as a sum of outer products over the words ``w``: per word, one ``[BLOCK_M]`` and one ``[BLOCK_N]``
load and ``BLOCK_M * BLOCK_N`` xor / popcount / add in registers, ``UNROLL`` words per loop step.
The operands are passed word-major (``[W, M]``, ``[W, N]``: contiguous loads) and zero-padded to
whole tiles and steps, so the loads carry no mask and vectorize. The int64 words of
:func:`~qnnrun.kernels.binary.pack_signs` are viewed as int32 words (same bit stream), since the
GPU's ``POPC`` instruction counts 32 bits.

On a GPU the popcount is libdevice's ``popc`` (one instruction); Triton's interpreter
(``TRITON_INTERPRET=1``, CPU tensors) cannot call libdevice, so there the kernel counts with a
SWAR popcount in integer ops (``hw_popcount=False``, also selectable on a GPU). Block sizes are
autotuned on the GPU and fixed in the interpreter.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Small blocks and a 4-word step, so that tests with small shapes cover several programs, ragged
# tiles and padded words (K = 300: 10 int32 words, padded to 12).
_INTERPRETER_BLOCK = 32
_INTERPRETER_UNROLL = 4


@triton.jit
def _popcount32(x):
    """SWAR popcount of int32 words (arithmetic shifts are masked off; the byte sum fits in 6 bits)."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101) >> 24


@triton.jit
def _xnor_gemm_kernel(a_ptr, b_ptr, c_ptr, M, N, W, K,
                      stride_aw, stride_bw, stride_cm,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UNROLL: tl.constexpr,
                      HW_POPCOUNT: tl.constexpr):
    """c[m, n] = K - 2 * sum_w popcount(a[w, m] ^ b[w, n]) for m < M, n < N; c [M, N] int32 (unit
    stride along N). a [W, >= M] and b [W, >= N] are int32 words, word-major (unit stride along
    M and N) and zero-padded so that every tile and every ``UNROLL``-word step is in bounds: the
    loads need no mask and vectorize (W a multiple of ``UNROLL``, rows a multiple of the blocks)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for w0 in range(0, W, UNROLL):
        for u in tl.static_range(UNROLL):
            a = tl.load(a_ptr + (w0 + u) * stride_aw + offs_m)
            b = tl.load(b_ptr + (w0 + u) * stride_bw + offs_n)
            x = a[:, None] ^ b[None, :]
            if HW_POPCOUNT:
                acc += libdevice.popc(x)
            else:
                acc += _popcount32(x)
    out = K - 2 * acc
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], out, mask=mask)


@triton.jit
def _pack_signs_kernel(x_ptr, out_ptr, R, K, W, stride_xr, stride_or,
                       BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """out[r, w] = int32 word of the signs x[r, 32 w + j] >= 0 at bit j (0 past K); x [R, K] float,
    unit stride along K; out [R, W] int32."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    bit = tl.arange(0, 32)
    cols = offs_w[:, None] * 32 + bit[None, :]
    mask = (offs_r[:, None, None] < R) & (cols[None, :, :] < K)
    x = tl.load(x_ptr + offs_r[:, None, None] * stride_xr + cols[None, :, :], mask=mask, other=-1.0)
    # Distinct powers of two: their int32 sum is their bitwise or (bit 31 wraps to -2^31).
    words = tl.sum(tl.where(x >= 0, 1, 0) << bit[None, None, :], axis=2)
    tl.store(out_ptr + offs_r[:, None] * stride_or + offs_w[None, :], words,
             mask=(offs_r[:, None] < R) & (offs_w[None, :] < W))


_PACK_BLOCK_R = 16
_PACK_BLOCK_W = 8


def pack_signs_triton(x: Tensor) -> Tensor:
    """:func:`qnnrun.kernels.binary.pack_signs` of a float ``x`` [..., K] (K >= 1) in one kernel:
    int64 words [..., ceil(K / 64)]. CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``."""
    k = x.shape[-1]
    rows = x.reshape(-1, k).contiguous()
    words = 2 * -(-k // 64)
    out = torch.empty(rows.shape[0], words, dtype=torch.int32, device=x.device)
    if rows.shape[0]:
        grid = (triton.cdiv(rows.shape[0], _PACK_BLOCK_R), triton.cdiv(words, _PACK_BLOCK_W))
        _pack_signs_kernel[grid](rows, out, rows.shape[0], k, words, rows.stride(0), out.stride(0),
                                 BLOCK_R=_PACK_BLOCK_R, BLOCK_W=_PACK_BLOCK_W)
    return out.view(torch.int64).reshape(*x.shape[:-1], words // 2)


# (BLOCK_M, BLOCK_N, UNROLL, warps, stages): the configurations that ptxas compiles for sm_90
# without register spills and with at most ~0.3 load instructions per popcount (others, such as
# 128x128 with 8 warps, got a layout with one scalar load per output; docs/binary_kernels.md).
_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "UNROLL": unroll}, num_warps=warps, num_stages=stages)
    for bm, bn, unroll, warps, stages in (
        (128, 64, 1, 4, 3), (128, 64, 4, 4, 2), (64, 128, 1, 4, 3), (64, 128, 4, 4, 2), (128, 128, 1, 4, 3),
        (256, 64, 1, 4, 3), (128, 256, 1, 8, 3), (128, 256, 4, 8, 2), (256, 128, 1, 8, 3),
    )
]
_ROW_PAD = 256  # the largest BLOCK_M / BLOCK_N above
_WORD_PAD = 4  # the largest UNROLL above
_xnor_gemm_tuned = triton.autotune(configs=_CONFIGS, key=["M", "N", "W"])(_xnor_gemm_kernel)


def _word_major(packed: Tensor, row_multiple: int) -> Tensor:
    """int64 words [R, W64] -> int32 words [roundup(2 W64, _WORD_PAD), roundup(R, row_multiple)],
    transposed and zero-padded (padding words xor to 0 and add nothing)."""
    words = packed.contiguous().view(torch.int32)
    rows, count = words.shape
    out = torch.zeros(triton.cdiv(count, _WORD_PAD) * _WORD_PAD, triton.cdiv(rows, row_multiple) * row_multiple,
                      dtype=torch.int32, device=packed.device)
    out[:count, :rows] = words.t()
    return out


def xnor_matmul_triton(a: Tensor, b: Tensor, k: int, hw_popcount: bool | None = None) -> Tensor:
    """``k - 2 * popcount(a xor b)`` summed over words: int32 [M, N] for packed int64 ``a`` [M, W64],
    ``b`` [N, W64] (validated by :func:`qnnrun.kernels.binary.xnor_matmul`).

    CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``. ``hw_popcount`` (default: on
    unless interpreting) picks libdevice ``popc`` over the SWAR popcount.
    """
    if hw_popcount is None:
        hw_popcount = not INTERPRETING
    m, n = a.shape[0], b.shape[0]
    out = torch.empty(m, n, dtype=torch.int32, device=a.device)
    if m == 0 or n == 0:
        return out
    # Word-major, padded int32 operands: the per-word loads of a tile are contiguous and unmasked.
    row_multiple = _INTERPRETER_BLOCK if INTERPRETING else _ROW_PAD
    a_words, b_words = _word_major(a, row_multiple), _word_major(b, row_multiple)
    words = a_words.shape[0]
    args = (a_words, b_words, out, m, n, words, k, a_words.stride(0), b_words.stride(0), out.stride(0))
    if INTERPRETING:
        grid = (triton.cdiv(m, _INTERPRETER_BLOCK), triton.cdiv(n, _INTERPRETER_BLOCK))
        _xnor_gemm_kernel[grid](*args, BLOCK_M=_INTERPRETER_BLOCK, BLOCK_N=_INTERPRETER_BLOCK,
                                UNROLL=_INTERPRETER_UNROLL, HW_POPCOUNT=hw_popcount)
    else:
        def grid(meta: dict) -> tuple[int, int]:
            return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"])

        _xnor_gemm_tuned[grid](*args, HW_POPCOUNT=hw_popcount)
    return out
