"""Integer forms of the quantizers: weights as codes + a level table, inputs as integer operands.

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

Each quantizer builds its own grids (``Quantizer.input_grid`` / ``Quantizer.weight_grid``); a grid
is a plain object with ``state()`` / :func:`grid_from_state`, so an export file holds only tensors
and plain values (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qnnrun.errors import QnnrunError
from qnnrun.quant import functional as Q

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


def per_row(value: Tensor | float, rows: int) -> Tensor:
    """``value`` (a scalar or [rows]) as a [rows] float64 CPU tensor, one entry per weight row."""
    return torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1).expand(rows).clone()


def no_integer_form(what: str, quantizer: nn.Module) -> QnnrunError:
    """The error of a ``what`` (input / weight) quantizer that has no integer form."""
    return QnnrunError(f"{what} quantizer {type(quantizer).__name__} has no integer form: format=int supports the "
                       f"uniform quantizers (ste, nbn/fbf/lbl, sq, lsq, dorefa, pact, bnn, qnn, aqe) and UNIQ's "
                       f"k-quantile weights")
