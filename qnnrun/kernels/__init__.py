"""Low-bit compute kernels: bit-packed binary (XNOR + popcount) GEMM and the packed W1A1 linear layer."""

from qnnrun.kernels.binary import (
    WORD_BITS,
    BinaryLinear,
    binarize_linear_layers,
    pack_signs,
    packed_words,
    popcount64,
    unpack_signs,
    xnor_matmul,
    xnor_matmul_cpu,
)

__all__ = [
    "WORD_BITS",
    "BinaryLinear",
    "binarize_linear_layers",
    "pack_signs",
    "packed_words",
    "popcount64",
    "unpack_signs",
    "xnor_matmul",
    "xnor_matmul_cpu",
]
