"""Quantizer modules and quantized layers.

Modules only hold state and call the pure functions of :mod:`qnnrun.quant.functional`.

A quantized layer (:class:`QuantConv2d`, :class:`QuantLinear`) quantizes its *input* with
``input_quant`` and its *weight* with ``weight_quant`` (``None`` = float). It also holds a
per-output-channel :class:`ChannelState`, which is how every method expresses *which parts of the
network are quantized*: direct STE sets every channel to ``QUANT`` at step 0; layer-by-layer,
filter-by-filter and neuron-by-neuron move groups of channels to ``QUANT`` or ``FROZEN`` over
time; SQ redraws a random set of ``FLOAT`` rows every step; UNIQ walks blocks from ``NOISY`` to
``FROZEN``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qnnrun.quant import functional as Q


class ChannelState(IntEnum):
    """What an output channel (conv filter / linear neuron) of a quantized layer uses."""

    FLOAT = 0  # the float weight row
    NOISY = 1  # the float row plus the quantizer's training-time noise (UNIQ-style)
    QUANT = 2  # the quantized row; the float shadow keeps training through the estimator
    FROZEN = 3  # the quantized row captured at freeze time; no gradient reaches it


class Quantizer(nn.Module):
    """Base class: maps a float tensor to its fake-quantized value at ``bits`` bits."""

    bits: int

    def __init__(self) -> None:
        super().__init__()
        self.calibrating = False  # set by Method.prepare while it runs the calibration batches
        # A disabled input quantizer passes its input through (a method's float phase). Weights
        # have the finer per-channel state of QuantLayer instead.
        self.enabled = True

    def reset(self) -> None:
        """Forget calibrated state before a new calibration (nothing to forget by default)."""

    def perturb(self, x: Tensor) -> Tensor:
        """Training-time noise standing in for quantization (the ``NOISY`` channel state)."""
        raise NotImplementedError(f"{type(self).__name__} defines no noise model")


class UniformQuantizer(Quantizer):
    """Symmetric uniform quantizer (zero point 0) with a max-abs range.

    Args:
        bits: 1 to 8 (16 allowed for tests).
        signed: ``True`` for signed codes, ``False`` for unsigned (after ReLU), ``None`` to detect
            it from data: signed once any observed input is negative.
        channels: number of output channels for a per-channel (axis 0) range, ``None`` for one
            range per tensor.
        range_mode: how the range statistic ``stat`` (max ``|x|``; mean ``|x|`` for signed 1 bit)
            is obtained: ``"dynamic"`` recomputes it from every input (weights), ``"ema"`` keeps an
            exponential moving average updated in training and fixed in eval (activations, as
            PyTorch's ``MovingAverageMinMaxObserver``), ``"fixed"`` keeps what calibration or a
            method set. Calibration (``calibrating = True``, see ``Method.prepare``) takes the
            largest value over its batches.
        momentum: EMA weight of the newest observation.
        narrow: drop the most negative signed code (symmetric grid).
        estimator: ``"clipped"`` or ``"ste"``, see :mod:`qnnrun.quant.functional`.

    The scale is ``stat / qmax`` (``stat`` itself for signed 1 bit, where ``stat = mean |x|``).
    Until a range has been observed the quantizer takes it from each input without storing it,
    so an evaluation before calibration changes no state.
    """

    def __init__(
        self,
        bits: int,
        signed: bool | None = True,
        channels: int | None = None,
        range_mode: str = "dynamic",
        momentum: float = 0.01,
        narrow: bool = False,
        estimator: Q.Estimator = "clipped",
    ) -> None:
        super().__init__()
        if range_mode not in ("dynamic", "ema", "fixed"):
            raise ValueError(f"range_mode={range_mode!r}: valid are dynamic, ema, fixed")
        self.bits = bits
        self.signed = signed
        self.auto_signed = signed is None
        self.per_channel = channels is not None
        self.range_mode = range_mode
        self.momentum = momentum
        self.narrow = narrow
        self.estimator = estimator
        self.observed = False
        self.register_buffer("stat", torch.zeros(channels) if channels is not None else torch.tensor(0.0))

    def _is_signed(self, x: Tensor) -> bool:
        if self.signed is not None:
            return self.signed
        return bool((x.detach().amin() < 0).item())

    def _measure(self, x: Tensor, signed: bool) -> Tensor:
        if signed and self.bits == 1:
            return Q.channel_mean_abs(x, self.per_channel)
        return Q.channel_amax(x, self.per_channel)

    def reset(self) -> None:
        """Forget the observed range (and the detected sign, when it is detected from data)."""
        self.observed = False
        if self.auto_signed:
            self.signed = None
        self.stat.zero_()

    def observe(self, x: Tensor) -> None:
        """Update the range statistic from ``x``: the largest value over the calibration batches
        while ``calibrating``, else an EMA (the first observation is taken as it is)."""
        # The sign is detected on the first observation and on every calibration batch, never in
        # the training loop (it costs a device sync).
        if self.auto_signed and (self.signed is None or (self.calibrating and not self.signed)):
            self.signed = bool((x.detach().amin() < 0).item())
        value = self._measure(x, bool(self.signed)).reshape(self.stat.shape).to(self.stat.dtype)
        if not self.observed:
            self.stat.copy_(value)
            self.observed = True
        elif self.calibrating:
            torch.maximum(self.stat, value, out=self.stat)
        else:
            self.stat.lerp_(value, self.momentum)

    def scale(self, x: Tensor) -> Tensor:
        """Step size for input ``x``, shaped to broadcast against it (``[C, 1, ...]`` per channel)."""
        signed = self._is_signed(x)
        stat = self.stat if self.observed and self.range_mode != "dynamic" else self._measure(x, signed)
        if self.per_channel:
            stat = stat.reshape(-1, *([1] * (x.dim() - 1)))
        if signed and self.bits == 1:
            return stat.clamp_min(1e-8)
        return Q.maxabs_scale(stat, self.bits, signed, self.narrow)

    def forward(self, x: Tensor) -> Tensor:
        if self.range_mode != "dynamic" and (self.calibrating or (self.training and self.range_mode == "ema")):
            with torch.no_grad():
                self.observe(x)
        return Q.uniform_quantize(x, self.scale(x), self.bits, self._is_signed(x), self.narrow, self.estimator)

    def perturb(self, x: Tensor) -> Tensor:
        """``x + e`` with ``e ~ U[-s/2, s/2]``: the additive-noise model of uniform rounding."""
        step = self.scale(x).detach()
        return x + (torch.rand_like(x) - 0.5) * step

    def get_extra_state(self) -> dict[str, Any]:
        return {"signed": self.signed, "observed": self.observed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.signed = state["signed"]
        self.observed = state["observed"]

    def extra_repr(self) -> str:
        granularity = "channel" if self.per_channel else "tensor"
        return (
            f"bits={self.bits}, signed={self.signed}, per_{granularity}, range={self.range_mode}, "
            f"estimator={self.estimator}"
        )


class QuantLayer(nn.Module):
    """Mixin for conv/linear layers with quantized input and weight and per-channel state.

    Subclasses call :meth:`_init_quant` from ``__init__`` and use :meth:`effective_weight`.
    """

    weight: nn.Parameter
    weight_quant: Quantizer | None
    input_quant: Quantizer | None

    def _init_quant(self, weight_quant: Quantizer | None, input_quant: Quantizer | None) -> None:
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        channels = self.weight.shape[0]
        self.register_buffer("channel_state", torch.full((channels,), int(ChannelState.QUANT), dtype=torch.uint8))
        self.register_buffer("frozen_weight", torch.zeros_like(self.weight, requires_grad=False))
        self._present: frozenset[int] | None = None
        self._register_load_state_dict_pre_hook(self._forget_present)

    def _forget_present(self, *args: Any, **kwargs: Any) -> None:
        self._present = None

    @property
    def weight_bits(self) -> int:
        """Bits of the weights as they run (32 when float)."""
        return 32 if self.weight_quant is None else self.weight_quant.bits

    @property
    def input_bits(self) -> int:
        """Bits of the input activations as they run (32 when float)."""
        return 32 if self.input_quant is None else self.input_quant.bits

    def present_states(self) -> frozenset[int]:
        """Set of :class:`ChannelState` values in use (cached: one device sync per change)."""
        if self._present is None:
            self._present = frozenset(int(v) for v in torch.unique(self.channel_state).tolist())
        return self._present

    def set_channel_state(self, state: ChannelState, channels: Tensor | slice | None = None) -> None:
        """Set the state of ``channels`` (indices, bool mask or slice; ``None`` = all).

        ``FROZEN`` captures the channels' current quantized rows; they stay fixed from then on.
        """
        index = slice(None) if channels is None else channels
        if state == ChannelState.FROZEN:
            with torch.no_grad():
                quantized = self.weight_quant(self.weight) if self.weight_quant is not None else self.weight
                self.frozen_weight[index] = quantized[index].detach()
        self.channel_state[index] = int(state)
        self._present = None

    def quantized_fraction(self) -> float:
        """Fraction of output channels in ``QUANT`` or ``FROZEN`` state (0 for float weights)."""
        if self.weight_quant is None:
            return 0.0
        return float((self.channel_state >= ChannelState.QUANT).float().mean())

    def effective_weight(self) -> Tensor:
        """The weight the layer computes with, row by row according to ``channel_state``."""
        weight = self.weight
        if self.weight_quant is None:
            return weight
        present = self.present_states()
        if len(present) == 1:  # the common case: one state for the whole layer, no masking
            (only,) = present
            if only == ChannelState.QUANT:
                return self.weight_quant(weight)
            if only == ChannelState.FLOAT:
                return weight
            if only == ChannelState.FROZEN:
                return self.frozen_weight
            return self.weight_quant.perturb(weight)
        state = self.channel_state.view(-1, *([1] * (weight.dim() - 1)))
        out = weight
        if ChannelState.NOISY in present:
            out = torch.where(state == ChannelState.NOISY, self.weight_quant.perturb(weight), out)
        if ChannelState.QUANT in present:
            out = torch.where(state == ChannelState.QUANT, self.weight_quant(weight), out)
        if ChannelState.FROZEN in present:
            out = torch.where(state == ChannelState.FROZEN, self.frozen_weight, out)
        return out

    def quantize_input(self, x: Tensor) -> Tensor:
        if self.input_quant is None or not self.input_quant.enabled:
            return x
        return self.input_quant(x)


class QuantConv2d(nn.Conv2d, QuantLayer):
    """``nn.Conv2d`` with quantized input [B, C_in, H, W] and weight [C_out, C_in/groups, kh, kw]."""

    def __init__(self, *args: Any, weight_quant: Quantizer | None = None, input_quant: Quantizer | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(weight_quant, input_quant)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quant: Quantizer | None, input_quant: Quantizer | None) -> QuantConv2d:
        """A quantized copy of ``conv`` sharing nothing with it (weights copied)."""
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            weight_quant=weight_quant, input_quant=input_quant,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantize_input(x), self.effective_weight(), self.bias)


class QuantLinear(nn.Linear, QuantLayer):
    """``nn.Linear`` with quantized input [..., in_features] and weight [out_features, in_features]."""

    def __init__(self, *args: Any, weight_quant: Quantizer | None = None, input_quant: Quantizer | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(weight_quant, input_quant)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quant: Quantizer | None, input_quant: Quantizer | None) -> QuantLinear:
        """A quantized copy of ``linear`` (weights copied)."""
        layer = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            weight_quant=weight_quant, input_quant=input_quant,
            device=linear.weight.device, dtype=linear.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantize_input(x), self.effective_weight(), self.bias)


def quant_layers(model: nn.Module) -> list[tuple[str, QuantLayer]]:
    """Every quantized layer of ``model`` with its qualified name, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QuantLayer)]
