"""Quantizer modules: each maps a float tensor to its fake-quantized value and answers for its own
integer form (:meth:`Quantizer.input_grid`, :meth:`Quantizer.weight_grid`, read by :mod:`qnnrun.export`).

Modules only hold state and call the pure functions of :mod:`qnnrun.quant.functional`. Quantizers
with a range found from data (uniform max-abs, affine MMSE) and on fixed level sets (BinaryNet's,
TWN's, AQE's, DoReFa's, UNIQ's k-quantiles) are here; those with learned ranges (PACT, LSQ) in
:mod:`qnnrun.quant.learned`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from qnnrun.errors import QnnrunError
from qnnrun.quant import calibrate as C
from qnnrun.quant import functional as Q
from qnnrun.quant.grids import (
    InputGrid,
    Pow2Grid,
    RoundGrid,
    SignGrid,
    TernaryGrid,
    WeightGrid,
    no_integer_form,
    per_row,
)

SIGN_LEVELS = torch.tensor([-1, 1])  # the level table of a sign grid (codes 0, 1)


def resolved_sign(signed: bool | None, x: Tensor) -> bool:
    """A quantizer's ``signed`` when it is set, else whether ``x`` (any shape) holds a negative value
    (a device sync)."""
    if signed is not None:
        return signed
    return bool((x.detach().amin() < 0).item())


class Quantizer(nn.Module):
    """Base class: maps a float tensor to its fake-quantized value at ``bits`` bits."""

    bits: int

    def __init__(self) -> None:
        super().__init__()
        self.calibrating = False  # set by Method.calibrate_quantizers while it runs the calibration batches
        self.image_input = False  # set by convert() on the input quantizer of the first layer (the image)
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

    def input_grid(self, name: str, like: Tensor) -> InputGrid:
        """This quantizer's integer form on the input of layer ``name``, as it quantizes in evaluation.

        ``like`` is a tensor of the input's rank (only its dimensions are used). Raises a
        :class:`QnnrunError` naming the layer when there is none or the quantizer was never calibrated.
        """
        raise no_integer_form("input", self)

    def weight_grid(self, weight: Tensor, evaluated: Tensor, name: str) -> WeightGrid:
        """The grid of layer ``name``'s quantized weight: ``weight`` is its float weight [C, ...],
        ``evaluated`` the weight the layer computes with in evaluation (frozen rows included)."""
        raise no_integer_form("weight", self)

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
        signed = resolved_sign(self.signed, x)
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
        return Q.uniform_quantize(x, self.scale(x), self.bits, resolved_sign(self.signed, x), self.narrow,
                                  self.estimator)

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

    def input_grid(self, name: str, like: Tensor) -> InputGrid:
        if not self.observed or self.range_mode == "dynamic" or self.signed is None:
            raise QnnrunError(f"the input quantizer of {name} has no calibrated range: export a trained checkpoint")
        scale = self.scale(like)
        if self.signed and self.bits == 1:
            return SignGrid(float(scale))
        qmin, qmax = Q.code_range(self.bits, self.signed, self.narrow)
        return RoundGrid((1.0 / scale).reshape(()), float(scale), 0, qmin, qmax, self.bits)

    def weight_grid(self, weight: Tensor, evaluated: Tensor, name: str) -> WeightGrid:
        scale, rows = per_row(self.scale(weight), weight.shape[0]), weight.shape[0]
        if self.bits == 1:
            return WeightGrid(1, SIGN_LEVELS.clone(), scale, torch.zeros(rows, dtype=torch.int64))
        qmin, qmax = Q.code_range(self.bits, True, self.narrow)
        return WeightGrid(self.bits, torch.arange(qmin, qmax + 1), scale, torch.zeros(rows, dtype=torch.int64))

    def extra_repr(self) -> str:
        granularity = "channel" if self.per_channel else "tensor"
        return (
            f"bits={self.bits}, signed={self.signed}, per_{granularity}, range={self.range_mode}, "
            f"estimator={self.estimator}"
        )


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

    def input_grid(self, name: str, like: Tensor) -> InputGrid:
        if not self.fitted:
            raise QnnrunError(f"the input quantizer of {name} has no calibrated range: export a trained checkpoint")
        scale, zero_point = self.parameters_for(like)
        return RoundGrid((1.0 / scale).reshape(()), float(scale), int(zero_point), 0, C.affine_qmax(self.bits),
                         self.bits)

    def weight_grid(self, weight: Tensor, evaluated: Tensor, name: str) -> WeightGrid:
        scale, zero_point = self.parameters_for(weight)
        rows = weight.shape[0]
        return WeightGrid(self.bits, torch.arange(0, C.affine_qmax(self.bits) + 1), per_row(scale, rows),
                          per_row(zero_point, rows).round().long())

    def extra_repr(self) -> str:
        granularity = "channel" if self.per_channel else "tensor"
        return f"bits={self.bits}, affine MMSE from {self.source}, per_{granularity}, estimator={self.estimator}"


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
        if self.observed:  # the state stays float32 under bf16 autocast (``batch`` has x's dtype)
            self.threshold.lerp_(batch.to(self.threshold.dtype), self.threshold_momentum)
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

    def input_grid(self, name: str, like: Tensor) -> InputGrid:
        if self.kind == "sign" or (self.kind == "linear" and self.bits == 1):
            return SignGrid(1.0)
        if self.kind == "ternary":
            calibrated = self.threshold_momentum is not None and self.observed
            return TernaryGrid(self.threshold.detach().clone() if calibrated else None)
        if self.kind == "pow2":
            return Pow2Grid(self.bits)
        half = 2 ** (self.bits - 1)
        return RoundGrid(torch.tensor(float(half)), 1.0 / half, 0, -half, half - 1, self.bits)

    def weight_grid(self, weight: Tensor, evaluated: Tensor, name: str) -> WeightGrid:
        rows, bits = weight.shape[0], self.bits
        zero = torch.zeros(rows, dtype=torch.int64)
        if self.kind == "sign" or (self.kind == "linear" and bits == 1):
            return WeightGrid(1, SIGN_LEVELS.clone(), per_row(1.0, rows), zero)
        if self.kind == "ternary":
            return WeightGrid(2, torch.tensor([-1, 0, 1]), per_row(1.0, rows), zero)
        if self.kind == "pow2":
            top = Q.pow2_magnitudes(bits) - 1
            magnitudes = 2 ** torch.arange(top + 1)
            return WeightGrid(bits, torch.cat([-magnitudes.flip(0), torch.tensor([0]), magnitudes]),
                              per_row(2.0**-top, rows), zero)
        half = 2 ** (bits - 1)
        return WeightGrid(bits, torch.arange(-half, half), per_row(1.0 / half, rows), zero)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, bits={self.bits}"


class AsymptoticQuantizer(LevelQuantizer):
    """:class:`LevelQuantizer` whose training output is ``alpha * h(x) + (1 - alpha) * x`` with the
    gradient ``2 * alpha * g * 1{|x| <= 1}``; in evaluation (``training`` false) it is ``h(x)``."""

    def __init__(self, kind: str, bits: int, alpha: float, threshold_momentum: float | None = None) -> None:
        super().__init__(kind, bits, threshold_momentum)
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        levels = self.levels(x)
        if not self.training:
            return Q.clipped_ste(x, levels)
        return Q.clipped_ste(x, self.alpha * levels + (1.0 - self.alpha) * x.detach(), grad_scale=2.0 * self.alpha)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"


class TernaryQuantizer(Quantizer):
    """TWN weight quantizer: per-tensor threshold ``threshold_ratio * mean |w - mean(w)|``
    (``centered``, the SQ authors' code) or ``threshold_ratio * mean |w|``, per-row scale."""

    def __init__(self, threshold_ratio: float = 0.7, estimator: Q.Estimator = "ste", centered: bool = True) -> None:
        super().__init__()
        self.bits = 2
        self.threshold_ratio = threshold_ratio
        self.estimator = estimator
        self.centered = centered

    def threshold_and_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The threshold (0-d) and per-row scales ``[C, 1, ...]`` of weight ``x`` (export reads them too)."""
        return Q.twn_threshold_and_scale(x, self.threshold_ratio, self.centered)

    def forward(self, x: Tensor) -> Tensor:
        threshold, scale = self.threshold_and_scale(x)
        return Q.ternary_quantize(x, threshold, scale, self.estimator)

    def weight_grid(self, weight: Tensor, evaluated: Tensor, name: str) -> WeightGrid:
        _, alpha = self.threshold_and_scale(weight)
        rows = weight.shape[0]
        return WeightGrid(2, torch.tensor([-1, 0, 1]), per_row(alpha, rows), torch.zeros(rows, dtype=torch.int64))

    def extra_repr(self) -> str:
        spread = "mean|w - mean(w)|" if self.centered else "mean|w|"
        return (f"bits=2 (ternary), threshold={self.threshold_ratio} * {spread}, per_row_scale, "
                f"estimator={self.estimator}")


class DorefaWeightQuantizer(Quantizer):
    """DoReFa weight quantizer (no state): :func:`qnnrun.quant.functional.dorefa_weight`."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, w: Tensor) -> Tensor:
        return Q.dorefa_weight(w, self.bits)

    def weight_grid(self, weight: Tensor, evaluated: Tensor, name: str) -> WeightGrid:
        rows, zero = weight.shape[0], torch.zeros(weight.shape[0], dtype=torch.int64)
        if self.bits == 1:
            return WeightGrid(1, SIGN_LEVELS.clone(), per_row(weight.abs().mean(), rows), zero)
        levels = 2**self.bits - 1
        return WeightGrid(self.bits, 2 * torch.arange(0, levels + 1) - levels, per_row(1.0 / levels, rows), zero)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class DorefaActivationQuantizer(Quantizer):
    """DoReFa activation quantizer (no state): :func:`qnnrun.quant.functional.dorefa_activation`.
    ``negative_seen``: whether a calibration input held negative values, which the ``[0, 1]`` clip
    zeroes (the paper's nets feed it ReLU outputs only)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.negative_seen = False

    def reset(self) -> None:
        self.negative_seen = False

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating and not self.negative_seen:
            self.negative_seen = bool((x.detach().amin() < 0).item())
        if self.image_input and self.calibrating and self.negative_seen:
            raise QnnrunError(
                "method=dorefa with method.act_clip=1 clips its inputs to [0, 1], which would cut off the "
                "negative half of the image: keep the image input float (quant.image_input_bits=32, "
                "DoReFa's default), or give method.act_clip a level or mse (the image is then clipped "
                "symmetrically, from its largest |x|)")
        return Q.dorefa_activation(x, self.bits)

    def input_grid(self, name: str, like: Tensor) -> InputGrid:
        levels = 2**self.bits - 1
        return RoundGrid(torch.tensor(float(levels)), 1.0 / levels, 0, 0, levels, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class KQuantileQuantizer(Quantizer):
    """k-quantile weight quantizer (``k = 2^bits``) under a normal fit of the whole tensor.

    ``forward`` quantizes (straight-through gradient); ``perturb`` adds UNIQ's uniform-domain
    noise in training and quantizes in evaluation.
    """

    def __init__(self, bits: int, noise_grad: str = "identity") -> None:
        super().__init__()
        if noise_grad not in Q.NOISE_GRADIENTS:
            raise ValueError(f"noise_grad={noise_grad!r}: valid are {Q.NOISE_GRADIENTS}")
        self.bits = bits
        self.noise_grad = noise_grad

    def forward(self, x: Tensor) -> Tensor:
        mean, std = Q.gaussian_fit(x)
        return Q.kquantile_quantize(x, self.bits, mean, std)

    def perturb(self, x: Tensor) -> Tensor:
        if not self.training:
            return self(x)
        mean, std = Q.gaussian_fit(x)
        half_bin = 0.5 / 2**self.bits
        noise = (torch.rand_like(x) * 2 - 1) * half_bin
        return Q.kquantile_noise(x, self.bits, mean, std, noise, self.noise_grad)

    def weight_grid(self, weight: Tensor, evaluated: Tensor, name: str) -> WeightGrid:
        """The distinct values of ``evaluated`` as a float level table (frozen blocks keep the levels
        of the normal fit they were frozen under, so the table is read from the weights)."""
        values = torch.unique(evaluated.detach().double().cpu())
        if values.numel() > 2**self.bits:
            raise QnnrunError(f"{name}: {values.numel()} distinct weights, more than the {2 ** self.bits} "
                              f"levels of {self.bits} bits")
        rows = weight.shape[0]
        return WeightGrid(self.bits, values, torch.ones(rows, dtype=torch.float64),
                          torch.zeros(rows, dtype=torch.int64))

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, levels={2 ** self.bits} normal quantiles, per_tensor, "
                f"noise_grad={self.noise_grad}")
