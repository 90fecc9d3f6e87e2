"""Quantizer modules and quantized layers.

Modules only hold state and call the pure functions of :mod:`qnnrun.quant.functional`.

A quantized layer (:class:`QuantConv2d`, :class:`QuantLinear`) quantizes its *input* with
``input_quant`` and its *weight* with ``weight_quant`` (``None`` = float). It also holds a
per-output-channel :class:`ChannelState`, which is how every method expresses *which parts of the
network are quantized*: direct STE sets every channel to ``QUANT`` at step 0; layer-by-layer,
filter-by-filter and neuron-by-neuron move groups of channels to ``QUANT`` or ``FROZEN`` over
time; SQ redraws a random set of ``FLOAT`` rows every step; UNIQ walks blocks from ``NOISY`` to
``FROZEN``.

With ``recompute_input`` on (``trainer.recompute_quant=true``) a quantized layer saves its float
input for backward instead of the quantized copy and the quantizer's masks, and replays the input
quantizer in backward (:class:`_ReplayedInput`): less activation memory in eager mode, for a few
more element-wise kernels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qnnrun.quant import calibrate as C
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
        self.replay = False  # see replaying()

    @contextmanager
    def replaying(self) -> Iterator[None]:
        """Within it, ``forward`` replays a call already made on the same input in this step (a
        quantized layer's backward with ``recompute_input``): it must return the same value with the
        same gradients and update no state (range statistics, thresholds)."""
        self.replay = True
        try:
            yield
        finally:
            self.replay = False

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
        # A replay (see Quantizer.replaying) finds the range already updated by the call it replays.
        updating = self.calibrating or (self.training and self.range_mode == "ema")
        if self.range_mode != "dynamic" and updating and not self.replay:
            with torch.no_grad():
                self.observe(x)
        return Q.uniform_quantize(x, self.scale(x), self.bits, self._is_signed(x), self.narrow, self.estimator)

    def perturb(self, x: Tensor) -> Tensor:
        """``x + e`` with ``e ~ U[-s/2, s/2]``: the additive-noise model of uniform rounding."""
        step = self.scale(x).detach()
        return x + (torch.rand_like(x) - 0.5) * step

    def get_extra_state(self) -> dict[str, Any]:
        return {"signed": self.signed, "observed": self.observed, "enabled": self.enabled}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.signed = state["signed"]
        self.observed = state["observed"]
        self.enabled = state.get("enabled", True)  # absent in checkpoints written before it was saved

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
        # Dropout on the quantized input (see qnnrun.quant.convert.convert), or None.
        self.input_dropout: nn.Module | None = None
        channels = self.weight.shape[0]
        self.register_buffer("channel_state", torch.full((channels,), int(ChannelState.QUANT), dtype=torch.uint8))
        self.register_buffer("frozen_weight", torch.zeros_like(self.weight, requires_grad=False))
        # Save the float input for backward and replay the input quantizer there (_ReplayedInput).
        self.recompute_input = False
        self._present: frozenset[int] | None = None
        self.register_load_state_dict_post_hook(self._recount_present)

    def _copy_parameters(self, float_layer: nn.Conv2d | nn.Linear) -> None:
        """Copy ``float_layer``'s weight and bias (``from_float``: the float layer of the same shape)."""
        with torch.no_grad():
            self.weight.copy_(float_layer.weight)
            if float_layer.bias is not None:
                self.bias.copy_(float_layer.bias)

    def _recount_present(self, *args: Any) -> None:
        self._present = None
        self.present_states()

    @property
    def weight_bits(self) -> int:
        """Bits of the weights as they run (32 when float)."""
        return 32 if self.weight_quant is None else self.weight_quant.bits

    @property
    def input_bits(self) -> int:
        """Bits of the input activations as they run (32 when float)."""
        return 32 if self.input_quant is None else self.input_quant.bits

    def present_states(self) -> frozenset[int]:
        """Set of :class:`ChannelState` values in use (cached: one device sync per change).

        Kept up to date outside the forward pass (by :meth:`set_channel_state` and after
        ``load_state_dict``), so that a ``torch.compile``-d forward reads a constant instead of
        breaking its graph on a device sync.
        """
        if self._present is None:
            self._present = frozenset(int(v) for v in torch.unique(self.channel_state).tolist())
        return self._present

    def set_channel_state(self, state: ChannelState, channels: Tensor | slice | None = None, *,
                          present: Iterable[ChannelState] | None = None) -> None:
        """Set the state of ``channels`` (indices, bool mask or slice; ``None`` = all).

        ``FROZEN`` captures the channels' current quantized rows; they stay fixed from then on.
        ``present``: the states present in the layer afterwards, when the caller knows them; without
        it, setting a subset of channels counts the states on the device (one host sync).
        """
        index = slice(None) if channels is None else channels
        if state == ChannelState.FROZEN:
            with torch.no_grad():
                quantized = self.weight_quant(self.weight) if self.weight_quant is not None else self.weight
                self.frozen_weight[index] = quantized[index].detach()
        # Filled on the device: `channel_state[index] = int(state)` would lift the number from host memory.
        if isinstance(index, slice):
            self.channel_state[index].fill_(int(state))
        elif index.dtype == torch.bool:
            self.channel_state.masked_fill_(index, int(state))
        else:
            self.channel_state.index_fill_(0, index, int(state))
        if channels is None:
            self._present = frozenset({int(state)})
        else:
            self._present = None if present is None else frozenset(int(s) for s in present)
        self.present_states()

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
        # Plain ints: torch.compile (2.14) cannot trace ``tensor == IntEnum``.
        state = self.channel_state.view(-1, *([1] * (weight.dim() - 1)))
        out = weight
        if ChannelState.NOISY in present:
            out = torch.where(state == int(ChannelState.NOISY), self.weight_quant.perturb(weight), out)
        if ChannelState.QUANT in present:
            out = torch.where(state == int(ChannelState.QUANT), self.weight_quant(weight), out)
        if ChannelState.FROZEN in present:
            out = torch.where(state == int(ChannelState.FROZEN), self.frozen_weight, out)
        return out

    def quantize_input(self, x: Tensor) -> Tensor:
        """The input as the layer computes with it: quantized (when enabled), then dropped out."""
        if self.input_quant is not None and self.input_quant.enabled:
            x = self.input_quant(x)
        return x if self.input_dropout is None else self.input_dropout(x)

    def compute(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's own operation (convolution, matrix product) on an already quantized input."""
        raise NotImplementedError

    def compute_backward(self, grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None,
                         needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Gradients of :meth:`compute` to ``(x, weight, bias)`` (``None`` where ``needs`` is false),
        computed in the dtype of ``grad`` (autocast's) like autograd's own backward."""
        raise NotImplementedError

    def replayable(self) -> bool:
        """Whether :meth:`compute_backward` covers this layer's configuration."""
        return True

    def quantized_forward(self, x: Tensor) -> Tensor:
        """The layer's output for float input ``x``: :meth:`compute` on the quantized input and the
        effective weight, through :class:`_ReplayedInput` when ``recompute_input`` applies (training
        with autograd, eager mode, an enabled input quantizer, no input dropout)."""
        weight = self.effective_weight()
        quantizer = self.input_quant
        if (self.recompute_input and self.training and quantizer is not None and quantizer.enabled
                and self.input_dropout is None and torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and self.replayable()):
            return _ReplayedInput.apply(x, weight, self.bias, self, *quantizer.parameters())
        return self.compute(self.quantize_input(x), weight, self.bias)


class _ReplayedInput(torch.autograd.Function):
    """``layer.compute(layer.input_quant(x), weight, bias)`` saving ``x``, ``weight`` and ``bias``
    for backward, not the quantized input and the quantizer's masks: backward replays the input
    quantizer on ``x`` (with ``Quantizer.replaying``) to get both back, so the gradients are those
    of the plain path. After a ReLU, which saves the same ``x``, the layer's input costs no extra
    memory. The quantizer's parameters are passed as ``params`` so that their gradients (LSQ's
    step, PACT's clip level) come back through this function.

    A compiled graph does not take this path: its partitioner makes the same kind of trade itself.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, layer: QuantLayer,
                *params: Tensor) -> Tensor:
        ctx.layer = layer
        device = x.device.type
        ctx.autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        ctx.save_for_backward(x, weight, bias)
        return layer.compute(layer.input_quant(x), weight, bias)  # autograd is off here: nothing else saved

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        layer, needs = ctx.layer, ctx.needs_input_grad
        quantizer = layer.input_quant
        params = [p for p, need in zip(quantizer.parameters(), needs[4:], strict=True) if need]
        enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=enabled), quantizer.replaying():
            leaf = x.detach().requires_grad_(needs[0])
            quantized = quantizer.forward(leaf)  # not __call__: forward hooks see the step once
        wants_input = needs[0] or bool(params)
        grad_q, grad_w, grad_b = layer.compute_backward(grad, quantized.detach(), weight, bias,
                                                        (wants_input, needs[1], needs[2]))
        sources = ([leaf] if needs[0] else []) + params
        found = list(torch.autograd.grad(quantized, sources, grad_q.to(quantized.dtype), allow_unused=True)
                     if sources and quantized.requires_grad else [None] * len(sources))
        grad_x = found.pop(0) if needs[0] else None
        param_grads = iter(found)
        return (grad_x, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None,
                *(next(param_grads) if need else None for need in needs[4:]))


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
        layer._copy_parameters(conv)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return self.quantized_forward(x)

    def compute(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self._conv_forward(x, weight, bias)

    def replayable(self) -> bool:
        return self.padding_mode == "zeros" and not isinstance(self.padding, str)

    def compute_backward(self, grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None,
                         needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        # The kernel autograd's ConvolutionBackward0 calls.
        return torch.ops.aten.convolution_backward(
            grad, x.to(grad.dtype), weight.to(grad.dtype), None if bias is None else [bias.shape[0]], self.stride,
            self.padding, self.dilation, False, [0] * len(self.stride), self.groups, list(needs))


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
        layer._copy_parameters(linear)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return self.quantized_forward(x)

    def compute(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def compute_backward(self, grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None,
                         needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        rows = grad.reshape(-1, grad.shape[-1])  # [N, out_features] over all leading dimensions
        grad_x = grad.matmul(weight.to(grad.dtype)) if needs[0] else None
        grad_w = rows.t().mm(x.reshape(-1, x.shape[-1]).to(grad.dtype)) if needs[1] else None
        grad_b = rows.sum(0) if needs[2] else None
        return grad_x, grad_w, grad_b


def quant_layers(model: nn.Module) -> list[tuple[str, QuantLayer]]:
    """Every quantized layer of ``model`` with its qualified name, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QuantLayer)]


def set_recompute_input(model: nn.Module, on: bool) -> None:
    """Turn :class:`_ReplayedInput` on or off for every quantized layer (``trainer.recompute_quant``)."""
    for _, layer in quant_layers(model):
        layer.recompute_input = on


class PactQuantizer(Quantizer):
    """PACT activation quantizer with a learned clipping level ``alpha`` (0-d ``nn.Parameter``, or a
    buffer held fixed with ``learned=False``), :func:`qnnrun.quant.functional.pact_quantize`.

    Args:
        bits: 1 to 8 (2 to 8 for an input with negative values).
        alpha_init: starting clipping level (> 0, units of the input), or ``"mse"``: the level with
            the least squared quantization error, found over all calibration batches (see
            ``Method.prepare``), else on the first training input; an evaluation before that
            searches on each input and stores nothing.
        learned: ``False`` holds ``alpha`` as a buffer at its start, never trained: DoReFa's input
            quantizer ``quantize_k(clamp(x, 0, 1))`` on ``[0, alpha]`` (DoReFa's ``method.act_clip``).

    The sign is detected like :class:`UniformQuantizer`'s: signed once a calibration batch (or,
    without calibration, the first input) holds a negative value.
    """

    def __init__(self, bits: int, alpha_init: float | str = 10.0, learned: bool = True) -> None:
        super().__init__()
        if alpha_init != "mse" and not (isinstance(alpha_init, (int, float)) and alpha_init > 0):
            raise ValueError(f"alpha_init={alpha_init!r}: a level > 0 or 'mse'")
        self.bits = bits
        self.init = "mse" if alpha_init == "mse" else "fixed"
        alpha = torch.tensor(1.0 if alpha_init == "mse" else float(alpha_init))
        if learned:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)
        self.signed: bool | None = None
        self.initialized = self.init == "fixed"
        self._search: tuple[C.SquaredErrorSearch, bool] | None = None  # MSE start over calibration, its sign

    def reset(self) -> None:
        """Forget the detected sign (and a start searched from data) before a new calibration."""
        self.signed = None
        self._search = None
        if self.init == "mse":
            self.initialized = False

    def _least_error_alpha(self, x: Tensor, signed: bool) -> Tensor:
        """The searched level (0-d) after folding ``x`` into the search (kept while calibrating)."""
        qmax = Q.code_range(self.bits, signed)[1]  # Qp: 2^k - 1, or 2^(k-1) - 1 signed
        rows = x.reshape(1, -1)
        if not self.calibrating or self._search is None or self._search[1] != signed:
            reference = (2 * rows.detach().float().abs().mean(1) * qmax**0.5).clamp_min(1e-8)
            self._search = (C.SquaredErrorSearch(reference), signed)
        alpha = self._search[0].add(rows, lambda v, a: Q.pact_quantize(v, a.reshape(()), self.bits, signed))
        if not self.calibrating:
            self._search = None
        return alpha.reshape(())

    def forward(self, x: Tensor) -> Tensor:
        signed = self.signed
        learning = self.calibrating or self.training  # an evaluation before calibration stores nothing
        if signed is None or (self.calibrating and not signed):
            signed = bool((x.detach().amin() < 0).item())
            if learning:
                self.signed = signed
        alpha = self.alpha
        if self.init == "mse" and (self.calibrating or not self.initialized):
            with torch.no_grad():
                found = self._least_error_alpha(x, signed)
                if learning:
                    self.alpha.copy_(found)
                    self.initialized = True
                else:
                    alpha = found
        return Q.pact_quantize(x, alpha, self.bits, signed)

    def get_extra_state(self) -> dict[str, Any]:
        return {"signed": self.signed, "enabled": self.enabled, "initialized": self.initialized}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.signed = state["signed"]
        self.enabled = state["enabled"]
        self.initialized = state.get("initialized", True)  # checkpoints before alpha_init=mse: set

    def extra_repr(self) -> str:
        init = ", init=mse" if self.init == "mse" else ""
        fixed = "" if isinstance(self.alpha, nn.Parameter) else ", fixed"
        return f"bits={self.bits}, signed={self.signed}{init}{fixed}"


def clip_levels(model: nn.Module) -> dict[str, float]:
    """The clipping level ``alpha`` (units of the layer input) of each quantized layer of ``model``
    whose input quantizer is a :class:`PactQuantizer`, by layer name (PACT's and DoReFa's scalars)."""
    return {name: layer.input_quant.alpha.item() for name, layer in quant_layers(model)
            if isinstance(layer.input_quant, PactQuantizer)}


LEVEL_KINDS = ("sign", "ternary", "pow2", "linear")


class LevelQuantizer(Quantizer):
    """Scale-free quantizer onto fixed levels in ``[-1, 1]`` with the clipped STE (BNN, QNN).

    Args:
        kind: ``"sign"`` (``{-1, +1}``), ``"ternary"`` (``{-1, 0, +1}`` with threshold
            ``0.7 * mean|x|``), ``"pow2"`` (``{0, +-2^-p}``, :func:`~qnnrun.quant.functional.pow2_levels`)
            or ``"linear"`` (step ``2^(1-b)``, :func:`~qnnrun.quant.functional.linear_levels`).
        bits: the code width (1 for sign, 2 for ternary, >= 2 for pow2 and linear).
        threshold_momentum: for ``ternary`` on activations: the threshold is the batch's
            ``0.7 * mean|x|`` in training, kept as an EMA with this weight and used fixed in
            evaluation (so a test prediction does not depend on the rest of its batch). ``None``
            (weights) computes it from every input.

    Backward: ``dL/dx = dL/dy * 1{|x| <= 1}``.
    """

    def __init__(self, kind: str, bits: int, threshold_momentum: float | None = None) -> None:
        super().__init__()
        if kind not in LEVEL_KINDS:
            raise ValueError(f"kind={kind!r}: valid are {LEVEL_KINDS}")
        self.kind = kind
        self.bits = bits
        self.threshold_momentum = threshold_momentum
        self.observed = False
        self.register_buffer("threshold", torch.tensor(0.0))

    def reset(self) -> None:
        self.observed = False
        self.threshold.zero_()

    def _delta(self, x: Tensor) -> Tensor:
        if self.threshold_momentum is None:
            return Q.ternary_threshold(x)
        if not (self.training or self.calibrating):
            return self.threshold if self.observed else Q.ternary_threshold(x)
        batch = Q.ternary_threshold(x)
        if self.replay:
            return batch
        if self.observed:
            self.threshold.lerp_(batch, self.threshold_momentum)
        else:
            self.threshold.copy_(batch)
            self.observed = True
        return batch

    def levels(self, x: Tensor) -> Tensor:
        """The quantized value ``h(x)`` (no autograd)."""
        with torch.no_grad():
            if self.kind == "sign":
                return Q.binary_levels(x)
            if self.kind == "ternary":
                return Q.ternary_levels(x, self._delta(x))
            if self.kind == "pow2":
                return Q.pow2_levels(x, self.bits)
            return Q.linear_levels(x, self.bits)

    def forward(self, x: Tensor) -> Tensor:
        return Q.clipped_ste(x, self.levels(x))

    def get_extra_state(self) -> dict[str, Any]:
        return {"observed": self.observed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.observed = state["observed"]

    def extra_repr(self) -> str:
        return f"kind={self.kind}, bits={self.bits}"


class AffineQuantizer(Quantizer):
    """Affine quantizer with MMSE parameters (the Neuron-by-Neuron paper's; ``quant.init=mmse``).

    ``x_hat = (clamp(round(x / s) + z, 0, 2^b - 1) - z) * s`` with a scale ``s`` and an integer zero
    point ``z`` (see :mod:`qnnrun.quant.calibrate` for how they are found).

    Args:
        bits: 2 to 8 (16 allowed for tests); one code is always 0, so 1 bit is not offered.
        source: ``"tensor"``: the parameters minimise the squared error on the quantized tensor
            itself (weights, :func:`~qnnrun.quant.calibrate.mmse_tensor_params`); ``"histogram"``:
            on a histogram of the inputs seen while ``calibrating`` (activations,
            :func:`~qnnrun.quant.calibrate.mmse_histogram_params`). Calibration passes
            activations through unquantized, so a later layer sees float inputs while it collects.
        channels: number of output channels for per-channel (axis 0) parameters, ``None`` for one
            scale and zero point per tensor (``"tensor"`` source only).
        estimator: ``"clipped"`` or ``"ste"``, see :mod:`qnnrun.quant.functional`.

    The parameters are fixed once found: by :meth:`fit`, by a calibrating forward pass (tensor
    source), or when calibration ends (``calibrating = False``, histogram source). Until then each
    input is quantized with parameters solved from that input alone, without storing them.
    """

    def __init__(self, bits: int, source: str = "tensor", channels: int | None = None,
                 estimator: Q.Estimator = "clipped") -> None:
        super().__init__()
        if source not in ("tensor", "histogram"):
            raise ValueError(f"source={source!r}: valid are tensor, histogram")
        if source == "histogram" and channels is not None:
            raise ValueError("per-channel parameters need source='tensor'")
        C.affine_qmax(bits)  # validates bits
        self.bits = bits
        self.source = source
        self.per_channel = channels is not None
        self.estimator = estimator
        self.fitted = False
        shape = (channels,) if channels is not None else ()
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape))
        self._histogram: tuple[Tensor, float, float] | None = None

    @property
    def calibrating(self) -> bool:
        return self._calibrating

    @calibrating.setter
    def calibrating(self, value: bool) -> None:
        # The end of calibration solves the MMSE problem over the collected histogram.
        self._calibrating = value
        if not value and getattr(self, "_histogram", None) is not None:
            scale, zero_point = C.mmse_histogram_params(*self._histogram, self.bits)
            self._store(scale, zero_point)
            self._histogram = None

    def _store(self, scale: Tensor, zero_point: Tensor) -> None:
        self.scale.copy_(scale.reshape(self.scale.shape))
        self.zero_point.copy_(zero_point.reshape(self.zero_point.shape))
        self.fitted = True

    def _solve(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.source == "tensor":
            return C.mmse_tensor_params(x, self.bits, self.per_channel)
        return C.mmse_histogram_params(*C.histogram_update(None, 0.0, 0.0, x), self.bits)

    def reset(self) -> None:
        """Forget the parameters and any collected histogram."""
        self.fitted = False
        self._histogram = None

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Fix the parameters to the MMSE solution for ``x`` (the tensor source's rule)."""
        self._store(*C.mmse_tensor_params(x, self.bits, self.per_channel))

    def parameters_for(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scale and zero point for input ``x``, shaped to broadcast against it."""
        if self.fitted:
            scale, zero_point = self.scale, self.zero_point
        else:
            with torch.no_grad():
                scale, zero_point = self._solve(x)
        if self.per_channel:
            shape = (-1,) + (1,) * (x.dim() - 1)
            return scale.reshape(shape), zero_point.reshape(shape)
        return scale.reshape(()), zero_point.reshape(())

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            if self.source == "histogram":
                self._histogram = C.histogram_update(*(self._histogram or (None, 0.0, 0.0)), x)
                return x
            self.fit(x)
        scale, zero_point = self.parameters_for(x)
        return C.affine_quantize(x, scale, zero_point, self.bits, self.estimator)

    def get_extra_state(self) -> dict[str, Any]:
        return {"fitted": self.fitted, "enabled": self.enabled}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.fitted = state["fitted"]
        self.enabled = state["enabled"]

    def extra_repr(self) -> str:
        granularity = "channel" if self.per_channel else "tensor"
        return f"bits={self.bits}, affine MMSE from {self.source}, per_{granularity}, estimator={self.estimator}"
