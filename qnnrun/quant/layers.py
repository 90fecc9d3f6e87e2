"""Quantized layers (the quantizers they hold are in :mod:`qnnrun.quant.quantizers` and
:mod:`qnnrun.quant.learned`).

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

from collections.abc import Iterable
from enum import IntEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qnnrun.errors import QnnrunError
from qnnrun.quant import functional as Q
from qnnrun.quant.grids import InputGrid, WeightGrid
from qnnrun.quant.learned import PactQuantizer
from qnnrun.quant.quantizers import Quantizer


class ChannelState(IntEnum):
    """What an output channel (conv filter / linear neuron) of a quantized layer uses."""

    FLOAT = 0  # the float weight row
    NOISY = 1  # the float row plus the quantizer's training-time noise (UNIQ-style)
    QUANT = 2  # the quantized row; the float shadow keeps training through the estimator
    FROZEN = 3  # the quantized row captured at freeze time; no gradient reaches it


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

    def input_grid(self, name: str, like: Tensor) -> InputGrid:
        """The integer form of this layer's (quantized) input in evaluation; ``name`` names the layer in
        errors, ``like`` is a tensor of the input's rank."""
        if self.input_quant is None:
            raise QnnrunError(f"{name} has a float input: it has no integer form")
        return self.input_quant.input_grid(name, like)

    def weight_grid(self, name: str) -> WeightGrid:
        """The grid of this layer's quantized weight as it evaluates, asked of its weight quantizer.

        Raises a :class:`QnnrunError` when the weight is float, a row of it is still float (a
        progressive run that did not reach its end), or the quantizer has no integer form."""
        if self.weight_quant is None:
            raise QnnrunError(f"{name} has float weights: they have no integer form")
        if ChannelState.FLOAT in self.present_states():
            raise QnnrunError(f"{name} still has float weight rows (channel state FLOAT): export the checkpoint of "
                              f"a finished run")
        with torch.no_grad():
            weight = self.weight.detach()
            return self.weight_quant.weight_grid(weight, self.effective_weight().detach(), name)

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
    def from_float(cls, linear: nn.Linear, weight_quant: Quantizer | None,
                   input_quant: Quantizer | None) -> QuantLinear:
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


def fully_quantized(model: nn.Module) -> bool:
    """Whether ``model`` evaluates as its method's final quantized network: no quantized layer has a
    float weight row or an input quantizer switched off. Progressive methods and UNIQ reach that during
    the run (before, an evaluation measures a partly float network); SQ's float rows live only within
    a training step."""
    for _, layer in quant_layers(model):
        if layer.weight_quant is not None and ChannelState.FLOAT in layer.present_states():
            return False
        if layer.input_quant is not None and not layer.input_quant.enabled:
            return False
    return True


def set_recompute_input(model: nn.Module, on: bool) -> None:
    """Turn :class:`_ReplayedInput` on or off for every quantized layer (``trainer.recompute_quant``)."""
    for _, layer in quant_layers(model):
        layer.recompute_input = on


def clip_levels(model: nn.Module) -> dict[str, float]:
    """The clipping level ``alpha`` (units of the layer input) of each quantized layer of ``model``
    whose input quantizer is a :class:`PactQuantizer`, by layer name (PACT's and DoReFa's scalars)."""
    return {name: layer.input_quant.alpha.item() for name, layer in quant_layers(model)
            if isinstance(layer.input_quant, PactQuantizer)}


class ShiftBatchNorm:
    """BinaryNet's shift-based BatchNorm (Algorithm 3): every multiplication is by a power of two.

    ``c = x - mean``; variance ``mean(c * AP2(c))``; ``y = AP2(gamma) * (c * AP2(1 / sqrt(var + eps)))
    + beta``, with ``AP2`` the nearest power of two (identity gradient). Running mean and variance
    are kept as in ``nn.BatchNorm`` and used, through the same ``AP2``, in evaluation.

    As ``nn.BatchNorm`` does under autocast, a lower-precision input (bf16) is normalised in the
    precision of the layer's own parameters and buffers (float32) and returned in the input's dtype:
    its statistics, and so which power of two each channel is scaled by, are those of float32.
    """

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1, *([1] * (x.dim() - 2))]
        x_dtype, x = x.dtype, x.to(self.running_mean.dtype)
        if self.training:
            mean = x.mean(dims)
            centered = x - mean.view(shape)
            var = (centered * Q.power_of_two(centered.detach())).mean(dims)
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach(), momentum)
        else:
            centered = x - self.running_mean.view(shape)
            var = self.running_var
        out = centered * Q.power_of_two_ste((var + self.eps).rsqrt()).view(shape)
        if self.affine:
            out = out * Q.power_of_two_ste(self.weight).view(shape) + self.bias.view(shape)
        return out.to(x_dtype)


class ShiftBatchNorm1d(ShiftBatchNorm, nn.BatchNorm1d):
    """Shift-based BatchNorm over [B, C] or [B, C, L]."""


class ShiftBatchNorm2d(ShiftBatchNorm, nn.BatchNorm2d):
    """Shift-based BatchNorm over [B, C, H, W]."""
