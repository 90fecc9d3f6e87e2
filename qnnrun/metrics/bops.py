"""Compute cost and size of a (partly) quantized model: BOPs, MACs x bits, weight memory.

BOPs follow UNIQ (Baskin et al.): for a conv with ``n`` input channels per group, ``m`` output
channels, a ``kh x kw`` kernel, weight bits ``bw`` and input bits ``ba``, per output position

    BOPs = m * n * kh * kw * (ba * bw + ba + bw + log2(n * kh * kw))

times the output's ``H * W``: a per-image total. A linear layer is a 1x1 conv on a 1x1 map with
``n`` = fan-in. Float layers count at 32 bits; pooling, BatchNorm, activations and residual
additions are not counted. Also reported: ``MACs * bw * ba`` and the weight
memory, ``sum(numel * bw)`` over the conv/linear weights (float layers at 32 bits). Biases and
BatchNorm are left out: they are a few float values per output channel, and whether a method
folds BatchNorm into biases while it trains (nbn, fbf, lbl) or before (``quant.fold_bn``) must not
change the size of the same deployed network.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import Tensor, nn

from qnnrun.quant.convert import FLOAT_BITS, layer_name, probe_forward
from qnnrun.quant.layers import QuantLayer


@dataclass(frozen=True)
class LayerCost:
    """Cost of one conv/linear layer for one input image."""

    name: str
    kind: str  # "conv" | "linear"
    in_per_group: int  # n
    out_channels: int  # m
    kernel: int  # kh * kw
    output_positions: int  # H_out * W_out (1 for linear)
    weight_bits: int
    input_bits: int
    params: int  # weight elements

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image."""
        return self.out_channels * self.in_per_group * self.kernel * self.output_positions

    @property
    def bops(self) -> float:
        """UNIQ BOPs per image."""
        fan_in = self.in_per_group * self.kernel
        per_mac = self.input_bits * self.weight_bits + self.input_bits + self.weight_bits + math.log2(fan_in)
        return self.macs * per_mac

    @property
    def bit_macs(self) -> int:
        """``MACs * bw * ba`` per image."""
        return self.macs * self.weight_bits * self.input_bits

    @property
    def weight_memory_bits(self) -> int:
        return self.params * self.weight_bits

    def row(self) -> dict[str, object]:
        """Flat dict for tables and JSON."""
        return {**asdict(self), "macs": self.macs, "bops": self.bops, "bit_macs": self.bit_macs,
                "weight_memory_bits": self.weight_memory_bits}


def _bits(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, QuantLayer):
        return module.weight_bits, module.input_bits
    return FLOAT_BITS, FLOAT_BITS


def layer_costs(model: nn.Module, example_input: Tensor) -> list[LayerCost]:
    """Per-layer costs of ``model`` for one image, in forward order.

    Args:
        model: float or quantized model.
        example_input: [1, C, H, W] (any batch size; costs are per image).
    """
    costs: list[LayerCost] = []
    names = {m: layer_name(m, n) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}

    def record(module: nn.Module, _inputs: object, output: Tensor) -> None:
        weight_bits, input_bits = _bits(module)
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            costs.append(LayerCost(names[module], "conv", module.in_channels // module.groups, module.out_channels,
                                   kh * kw, output.shape[-2] * output.shape[-1], weight_bits, input_bits,
                                   module.weight.numel()))
        else:
            positions = output[0].numel() // module.out_features  # > 1 only for token-shaped inputs
            costs.append(LayerCost(names[module], "linear", module.in_features, module.out_features, 1,
                                   positions, weight_bits, input_bits, module.weight.numel()))

    probe_forward(model, example_input[:1], {m: record for m in names})
    return costs


def layer_widths(costs: list[LayerCost]) -> dict[str, dict[str, int]]:
    """Each layer's real widths, ``{name: {"w": weight bits, "a": input bits}}`` in forward order: what
    ``summary.json``, failure records and ONNX metadata give as a mixed run's ``layer_bits``."""
    return {c.name: {"w": c.weight_bits, "a": c.input_bits} for c in costs}


def totals(costs: list[LayerCost]) -> dict[str, float]:
    """Whole-model totals: ``bops``, ``macs``, ``bit_macs`` per image, ``weight_memory_bits``
    (conv/linear weights at their bit widths), ``weight_memory_mb`` (MiB) and ``compression``
    (the same weights' size at 32 bits / this size)."""
    memory = sum(c.weight_memory_bits for c in costs)
    fp32 = sum(c.params for c in costs) * FLOAT_BITS
    return {
        "bops": sum(c.bops for c in costs),
        "macs": sum(c.macs for c in costs),
        "bit_macs": sum(c.bit_macs for c in costs),
        "weight_memory_bits": memory,
        "weight_memory_mb": memory / 8 / 2**20,
        "compression": fp32 / memory,
    }


def format_table(costs: list[LayerCost], total: dict[str, float]) -> str:
    """A fixed-width per-layer table with a totals line (BOPs in G, memory in KiB)."""
    header = f"{'layer':<32} {'kind':<6} {'n':>5} {'m':>5} {'kh*kw':>5} {'Ho*Wo':>6} {'bw':>3} {'ba':>3} " \
             f"{'MMACs':>9} {'GBOPs':>9} {'KiB':>9}"
    lines = [header, "-" * len(header)]
    for c in costs:
        lines.append(
            f"{c.name:<32.32} {c.kind:<6} {c.in_per_group:>5} {c.out_channels:>5} {c.kernel:>5} "
            f"{c.output_positions:>6} {c.weight_bits:>3} {c.input_bits:>3} {c.macs / 1e6:>9.3f} "
            f"{c.bops / 1e9:>9.4f} {c.weight_memory_bits / 8 / 1024:>9.2f}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<32} {'':<6} {'':>5} {'':>5} {'':>5} {'':>6} {'':>3} {'':>3} {total['macs'] / 1e6:>9.3f} "
        f"{total['bops'] / 1e9:>9.4f} {total['weight_memory_bits'] / 8 / 1024:>9.2f}"
    )
    lines.append(f"weight memory {total['weight_memory_mb']:.4f} MiB, compression vs FP32 {total['compression']:.2f}x "
                 f"(conv/linear weights; biases and BatchNorm not counted)")
    lines.append("n: input channels per group (fan-in of a linear), m: output channels, kh*kw: kernel positions, "
                 "Ho*Wo: output positions, bw/ba: weight/input bits (32: float), KiB: conv/linear weights")
    return "\n".join(lines)
