"""Integer descriptions of the quantizers: weights as codes + a level table, inputs as integer operands.

A quantized layer computes ``y = conv(x_hat, w_hat) + b``. For the integer model both operands are
written as a scale times an integer:

* a weight row ``c`` is ``w_hat = scale_c * (levels[k] - zero_point_c)`` with a ``bits``-bit code
  ``k`` per weight (:class:`WeightGrid`); ``levels`` is an integer table for every uniform
  quantizer (``qmin..qmax``, DoReFa's odd integers, power-of-two levels in units of the smallest)
  and a float table for UNIQ's non-uniform k-quantile levels;
* an input ``x_hat = scale * operand`` with an integer operand computed from the float input by
  the quantizer's own formula, bit for bit (:class:`RoundGrid`, :class:`SignGrid`,
  :class:`TernaryGrid`, :class:`Pow2Grid`). Round and sign grids are also the targets of integer
  requantization (the previous layer's int32 accumulator is mapped onto them in integer).

Every grid is a plain object with ``state()`` / ``grid_from_state`` so the export file holds only
tensors and plain values (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qnnrun.data import DataInfo
from qnnrun.errors import QnnrunError
from qnnrun.methods.dorefa import DorefaActivationQuantizer, DorefaWeightQuantizer
from qnnrun.methods.lsq import LsqQuantizer
from qnnrun.methods.sq import TernaryQuantizer
from qnnrun.methods.uniq import KQuantileQuantizer
from qnnrun.quant import calibrate as C
from qnnrun.quant import functional as Q
from qnnrun.quant.layers import (AffineQuantizer, ChannelState, LevelQuantizer, PactQuantizer, QuantLayer, Quantizer,
                                 UniformQuantizer)


def probe_batch(info: DataInfo, device: torch.device, batch: int = 4) -> Tensor:
    """A fixed random batch [batch, C, H, W] (standard normal, seed 0) that traces the model's structure."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, info.in_channels, info.image_size, info.image_size, generator=generator).to(device)


# ---- inputs --------------------------------------------------------------------------------------


@dataclass
class RoundGrid:
    """``codes = clamp(round(x * mult) + zero_point, qmin, qmax)``, ``operand = codes - zero_point``,
    ``x_hat = scale * operand``. ``mult`` is the float32 factor the fake-quant formula multiplies by
    (``1 / s`` as PyTorch computes it, DoReFa's ``2^b - 1``, PACT's ``L / alpha``), so the codes
    are the fake-quant model's codes bit for bit."""

    mult: Tensor  # 0-d float32
    scale: float  # the value of one operand step
    zero_point: int
    qmin: int
    qmax: int
    bits: int

    def operands(self, x: Tensor) -> Tensor:
        """Integer operands (float64 holding integers) of float input ``x`` (any shape)."""
        codes = (torch.round(x.float() * self.mult.to(x.device)) + self.zero_point).clamp(self.qmin, self.qmax)
        return (codes - self.zero_point).double()

    @property
    def operand_range(self) -> tuple[int, int]:
        return self.qmin - self.zero_point, self.qmax - self.zero_point

    def state(self) -> dict[str, Any]:
        return {"type": "round", "mult": self.mult, "scale": self.scale, "zero_point": self.zero_point,
                "qmin": self.qmin, "qmax": self.qmax, "bits": self.bits}


@dataclass
class SignGrid:
    """``operand = +1`` where ``x >= 0`` else ``-1``; ``x_hat = scale * operand``."""

    scale: float
    bits: int = 1

    def operands(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, 1.0, -1.0).double()

    def state(self) -> dict[str, Any]:
        return {"type": "sign", "scale": self.scale}


@dataclass
class TernaryGrid:
    """``operand = sign(x)`` where ``|x| > delta`` else 0 (``delta``: the calibrated threshold, or
    ``None``: ``0.7 * mean|x|`` of each input, as an uncalibrated :class:`LevelQuantizer` does)."""

    delta: Tensor | None
    scale: float = 1.0
    bits: int = 2

    def operands(self, x: Tensor) -> Tensor:
        delta = Q.ternary_threshold(x) if self.delta is None else self.delta.to(x.device)
        return Q.ternary_levels(x, delta).double()

    def state(self) -> dict[str, Any]:
        return {"type": "ternary", "delta": self.delta, "scale": self.scale}


@dataclass
class Pow2Grid:
    """Power-of-two levels ``{0, +-2^-p}`` as integers in units of the smallest, ``2^-(P-1)``."""

    bits: int

    @property
    def scale(self) -> float:
        return 2.0 ** -(Q.pow2_magnitudes(self.bits) - 1)

    def operands(self, x: Tensor) -> Tensor:
        return (Q.pow2_levels(x, self.bits) / self.scale).double()

    def state(self) -> dict[str, Any]:
        return {"type": "pow2", "bits": self.bits}


InputGrid = RoundGrid | SignGrid | TernaryGrid | Pow2Grid


def grid_from_state(state: dict[str, Any]) -> InputGrid:
    """The input grid saved by ``state()``."""
    kind = state["type"]
    if kind == "round":
        return RoundGrid(state["mult"], state["scale"], state["zero_point"], state["qmin"], state["qmax"],
                         state["bits"])
    if kind == "sign":
        return SignGrid(state["scale"])
    if kind == "ternary":
        return TernaryGrid(state["delta"])
    return Pow2Grid(state["bits"])


def _unsupported(what: str, quantizer: nn.Module) -> QnnrunError:
    return QnnrunError(f"{what} quantizer {type(quantizer).__name__} has no integer form: format=int supports the "
                       f"uniform quantizers (ste, nbn/fbf/lbl, sq, lsq, dorefa, pact, bnn, qnn, aqe) and UNIQ's "
                       f"k-quantile weights")


def input_grid(quantizer: Quantizer, name: str, like: Tensor) -> InputGrid:
    """The integer form of ``quantizer`` as it quantizes inputs in evaluation.

    ``like`` is a tensor of the input's rank (only its dimensions are used). Raises a
    :class:`QnnrunError` naming layer ``name`` when the quantizer was never calibrated.
    """
    if isinstance(quantizer, UniformQuantizer):
        if not quantizer.observed or quantizer.range_mode == "dynamic" or quantizer.signed is None:
            raise QnnrunError(f"the input quantizer of {name} has no calibrated range: export a trained checkpoint")
        scale = quantizer.scale(like)
        if quantizer.signed and quantizer.bits == 1:
            return SignGrid(float(scale))
        qmin, qmax = Q.code_range(quantizer.bits, quantizer.signed, quantizer.narrow)
        return RoundGrid((1.0 / scale).reshape(()), float(scale), 0, qmin, qmax, quantizer.bits)
    if isinstance(quantizer, AffineQuantizer):
        if not quantizer.fitted:
            raise QnnrunError(f"the input quantizer of {name} has no calibrated range: export a trained checkpoint")
        scale, zero_point = quantizer.parameters_for(like)
        return RoundGrid((1.0 / scale).reshape(()), float(scale), int(zero_point), 0, C.affine_qmax(quantizer.bits),
                         quantizer.bits)
    if isinstance(quantizer, LsqQuantizer):
        if quantizer.offset is not None:
            raise QnnrunError(f"{name}: method.learned_offset=true (LSQ+) has no integer form here: valid is "
                              f"method.learned_offset=false")
        if not quantizer.initialized or quantizer.signed is None:
            raise QnnrunError(f"the input quantizer of {name} has no calibrated step: export a trained checkpoint")
        step = quantizer.step.detach().reshape(())
        qmin, qmax = quantizer.code_range()
        if (qmin, qmax) == (-1, 1):
            return SignGrid(float(step))
        return RoundGrid(1.0 / step, float(step), 0, qmin, qmax, quantizer.bits)
    if isinstance(quantizer, PactQuantizer):
        if quantizer.signed is None:
            raise QnnrunError(f"the input quantizer of {name} was never calibrated: export a trained checkpoint")
        levels = 2 ** (quantizer.bits - 1) - 1 if quantizer.signed else 2**quantizer.bits - 1
        alpha = quantizer.alpha.detach()
        return RoundGrid(levels / alpha, float(alpha) / levels, 0, -levels if quantizer.signed else 0, levels,
                         quantizer.bits)
    if isinstance(quantizer, DorefaActivationQuantizer):
        levels = 2**quantizer.bits - 1
        return RoundGrid(torch.tensor(float(levels)), 1.0 / levels, 0, 0, levels, quantizer.bits)
    if isinstance(quantizer, LevelQuantizer):
        if quantizer.kind == "sign" or (quantizer.kind == "linear" and quantizer.bits == 1):
            return SignGrid(1.0)
        if quantizer.kind == "ternary":
            calibrated = quantizer.threshold_momentum is not None and quantizer.observed
            return TernaryGrid(quantizer.threshold.detach().clone() if calibrated else None)
        if quantizer.kind == "pow2":
            return Pow2Grid(quantizer.bits)
        half = 2 ** (quantizer.bits - 1)
        return RoundGrid(torch.tensor(float(half)), 1.0 / half, 0, -half, half - 1, quantizer.bits)
    raise _unsupported("input", quantizer)


# ---- weights -------------------------------------------------------------------------------------


@dataclass
class WeightGrid:
    """Weight row ``c`` on ``scale[c] * (levels[k] - zero_point[c])``; ``levels`` sorted ascending,
    at most ``2^bits`` entries; integer (int64) for uniform quantizers, float64 for non-uniform ones."""

    bits: int
    levels: Tensor  # [L]
    scale: Tensor  # [C] float64
    zero_point: Tensor  # [C] int64

    @property
    def uniform(self) -> bool:
        return not self.levels.is_floating_point()


def _per_row(value: Tensor | float, rows: int) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1).expand(rows).clone()


def weight_grid(layer: QuantLayer, name: str) -> WeightGrid:
    """The grid of ``layer``'s quantized weight (its ``weight_quant`` in evaluation).

    Raises a :class:`QnnrunError` when a row of the layer is still float (a progressive run that
    did not reach its end) or the quantizer has no integer form.
    """
    quantizer, weight = layer.weight_quant, layer.weight.detach()
    rows = weight.shape[0]
    if ChannelState.FLOAT in layer.present_states():
        raise QnnrunError(f"{name} still has float weight rows (channel state FLOAT): export the checkpoint of a "
                          f"finished run")
    if isinstance(quantizer, KQuantileQuantizer):
        with torch.no_grad():
            values = torch.unique(layer.effective_weight().detach().double().cpu())
        if values.numel() > 2**quantizer.bits:
            raise QnnrunError(f"{name}: {values.numel()} distinct weights, more than the {2 ** quantizer.bits} "
                              f"levels of {quantizer.bits} bits")
        return WeightGrid(quantizer.bits, values, torch.ones(rows, dtype=torch.float64),
                          torch.zeros(rows, dtype=torch.int64))
    bits = quantizer.bits
    zero = torch.zeros(rows, dtype=torch.int64)
    sign = torch.tensor([-1, 1])
    if isinstance(quantizer, UniformQuantizer):
        scale = quantizer.scale(weight)
        if bits == 1:
            return WeightGrid(1, sign, _per_row(scale, rows), zero)
        qmin, qmax = Q.code_range(bits, True, quantizer.narrow)
        return WeightGrid(bits, torch.arange(qmin, qmax + 1), _per_row(scale, rows), zero)
    if isinstance(quantizer, AffineQuantizer):
        scale, zero_point = quantizer.parameters_for(weight)
        return WeightGrid(bits, torch.arange(0, C.affine_qmax(bits) + 1), _per_row(scale, rows),
                          _per_row(zero_point, rows).round().long())
    if isinstance(quantizer, LsqQuantizer):
        qmin, qmax = quantizer.code_range(True)
        levels = sign if (qmin, qmax) == (-1, 1) else torch.arange(qmin, qmax + 1)
        return WeightGrid(bits, levels, _per_row(quantizer.step, rows), zero)
    if isinstance(quantizer, DorefaWeightQuantizer):
        if bits == 1:
            return WeightGrid(1, sign, _per_row(weight.abs().mean(), rows), zero)
        levels = 2**bits - 1
        return WeightGrid(bits, 2 * torch.arange(0, levels + 1) - levels, _per_row(1.0 / levels, rows), zero)
    if isinstance(quantizer, TernaryQuantizer):
        _, alpha = quantizer.threshold_and_scale(weight)
        return WeightGrid(2, torch.tensor([-1, 0, 1]), _per_row(alpha, rows), zero)
    if isinstance(quantizer, LevelQuantizer):
        if quantizer.kind == "sign" or (quantizer.kind == "linear" and bits == 1):
            return WeightGrid(1, sign, _per_row(1.0, rows), zero)
        if quantizer.kind == "ternary":
            return WeightGrid(2, torch.tensor([-1, 0, 1]), _per_row(1.0, rows), zero)
        if quantizer.kind == "pow2":
            top = Q.pow2_magnitudes(bits) - 1
            magnitudes = 2 ** torch.arange(top + 1)
            return WeightGrid(bits, torch.cat([-magnitudes.flip(0), torch.tensor([0]), magnitudes]),
                              _per_row(2.0**-top, rows), zero)
        half = 2 ** (bits - 1)
        return WeightGrid(bits, torch.arange(-half, half), _per_row(1.0 / half, rows), zero)
    raise _unsupported("weight", quantizer)


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
