"""``method=lsq``: learned step size quantization (Esser et al., "Learned Step Size Quantization", ICLR 2020).

Every quantized weight and input has a step ``s`` that is an ``nn.Parameter`` trained with the
network: ``x_hat = round(clamp(x / s, -Qn, Qp)) * s``, with LSQ's step gradient and gradient scale
``g = 1 / sqrt(N * Qp)`` (:func:`qnnrun.quant.functional.lsq_quantize`). ``N`` is the number of
values sharing one step: the weights of the layer (of the output channel with
``quant.per_channel``) and, for activations, the features of one sample, as in the paper.
Steps start at ``2 * mean|x| / sqrt(Qp)``: for weights from the weights, for activations from the
calibration batches of :meth:`Method.prepare`. Weights use signed codes; inputs signed codes when
the calibration batches hold a negative value, else unsigned. First and last layer run at 8 bits.

``method.low_bit_weight_decay=true`` (default) follows the paper's training recipe (section 3,
"Weight decay", Table 2): lower precision needs less regularisation, so the weight decay of the
conv/linear weights is halved for a 3-bit network and quartered for a 2-bit one (the factor goes
by the weight bits; 1 at 4 bits and above).

``method.learned_offset=true`` adds LSQ+'s learned offset ``beta`` to each activation quantizer
(Bhalgat et al., "LSQ+", CVPRW 2020): unsigned codes on ``round(clamp((x - beta) / s, 0, 2^b - 1))
* s + beta``, ``beta`` starting at the smallest calibration value and ``s`` at
``2 * mean(x - beta) / sqrt(Qp)`` (LSQ's rule on the shifted input; for inputs after a ReLU this is
``beta = 0`` and plain LSQ). LSQ+ proposes an MSE initialisation instead: that is
``method.act_init=mse``, which starts every input step (with the offset: ``s`` for the starting
``beta``) where the squared quantization error over the calibration batches is least, searched
among :data:`~qnnrun.quant.calibrate.MSE_GRID` times the LSQ rule's step of the first batch, the
error of each candidate summed batch by batch (:class:`~qnnrun.quant.calibrate.SquaredErrorSearch`). On a
60-epoch float ResNet-20 it starts the 2-bit inputs at 1.05-6.1 times the LSQ rule's step
(docs/baselines.md).

A step must stay positive, which LSQ's update does not guarantee: a large step gradient (many values
clipped, each contributing ``Qp * g``) can carry a small step below zero in one update, and the
layer's output then collapses. After every optimizer step each step is therefore raised to at least
``method.min_step_ratio`` (default 1e-3) times the value it was initialised with, a floor a healthy
run never reaches; 0 turns the floor off (the paper as written). TensorBoard's
``lsq/steps_at_floor`` counts the steps held there.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.config import check_bool, check_choice, check_number
from qnnrun.methods.base import Method
from qnnrun.quant import functional as Q
from qnnrun.quant.calibrate import SquaredErrorSearch
from qnnrun.quant.layers import Quantizer, quant_layers

log = logging.getLogger("qnnrun")

INITS = ("lsq", "mse")
MIN_STEP_RATIO = 1e-3
"""Default floor of a learned step, as a fraction of the step it was initialised with."""


class LsqQuantizer(Quantizer):
    """Uniform quantizer with a learned step (and, optionally, a learned offset).

    Args:
        bits: 1 to 8.
        signed: ``True`` (weights), or ``None`` to detect it from data: signed once a calibration
            batch (or, without calibration, the first input) holds a negative value.
        channels: output channels for one step per channel (axis 0, weights), ``None`` for one step.
        activations: ``x`` is a batch [B, ...] of activations: the gradient scale counts the
            features of one sample; else ``x`` is a weight tensor and the scale counts the values
            sharing a step.
        learned_offset: LSQ+'s learned offset (unsigned codes, any input sign).
        init: ``"lsq"`` (the step rule ``2 mean|x| / sqrt(Qp)``) or ``"mse"`` (the step of
            ``MSE_GRID`` x that rule with the least squared quantization error).
        min_step_ratio: the buffer ``min_step`` (shape of ``step``) is set to this fraction of the
            initial step; :meth:`raise_to_floor` keeps ``step >= min_step``.

    Parameters ``step`` (0-d, or [C] per channel; units of ``x``) and ``offset`` (0-d, only with
    ``learned_offset``) are initialised from the data the first time the quantizer sees it: over
    all calibration batches while ``calibrating`` (see ``Method.prepare``), else from the first
    training input. An evaluation before that uses the rule on each input without storing it.
    """

    def __init__(self, bits: int, signed: bool | None = True, channels: int | None = None,
                 activations: bool = False, learned_offset: bool = False, init: str = "lsq",
                 min_step_ratio: float = MIN_STEP_RATIO) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init={init!r}: choose one of {', '.join(INITS)}")
        self.bits = bits
        self.init = init
        self.signed = False if learned_offset else signed
        self.auto_signed = signed is None and not learned_offset
        self.activations = activations
        self.step = nn.Parameter(torch.ones(channels) if channels is not None else torch.tensor(1.0))
        self.offset = nn.Parameter(torch.tensor(0.0)) if learned_offset else None
        self.min_step_ratio = min_step_ratio
        self.register_buffer("min_step", torch.zeros_like(self.step.detach()))
        self.initialized = False
        self._sums: tuple[Tensor, Tensor, Tensor, int] | None = None  # calibration: sum|x|, sum x, min x, count
        self._search: tuple[SquaredErrorSearch, bool] | None = None  # MSE init over calibration, its sign

    @property
    def per_channel(self) -> bool:
        return self.step.dim() == 1

    def code_range(self, signed: bool | None = None) -> tuple[int, int]:
        """Integer codes ``(-Qn, Qp)`` for ``signed`` (default: the quantizer's; unsigned until known)."""
        return Q.code_range(self.bits, bool(self.signed if signed is None else signed))

    def _is_signed(self, x: Tensor) -> bool:
        if self.signed is not None:
            return self.signed
        return bool((x.detach().amin() < 0).item())

    def reset(self) -> None:
        """Forget the initialisation (and a sign detected from data) before a new calibration."""
        self.initialized = False
        self._sums = None
        self._search = None
        if self.auto_signed:
            self.signed = None

    def _reduce(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """``sum|x|``, ``sum x``, ``min x`` per step (shape of ``step``) and the count per step."""
        flat = x.detach().float().flatten(1) if self.per_channel else x.detach().float().reshape(1, -1)
        sums = flat.abs().sum(1), flat.sum(1), flat.amin(1)
        if not self.per_channel:
            sums = tuple(s.reshape(()) for s in sums)
        return (*sums, flat.shape[1])

    def _initial(self, sums: tuple[Tensor, Tensor, Tensor, int], signed: bool) -> tuple[Tensor, Tensor | None]:
        """Step (and offset) from the statistics: LSQ's ``2 mean|x| / sqrt(Qp)``."""
        abs_sum, total, minimum, count = sums
        _, qmax = self.code_range(signed)
        if self.offset is not None:
            return (2 * (total / count - minimum) / qmax**0.5).clamp_min(1e-8), minimum
        if signed and self.bits == 1:
            # For sign, mean|x| is the L2-optimal scale; the LSQ rule would give twice it.
            return (abs_sum / count).clamp_min(1e-8), None
        return (2 * (abs_sum / count) / qmax**0.5).clamp_min(1e-8), None

    def _observe(self, x: Tensor) -> None:
        """Fold ``x`` into the initialisation statistics and set the parameters from them."""
        if self.auto_signed and (self.signed is None or (self.calibrating and not self.signed)):
            self.signed = bool((x.detach().amin() < 0).item())
        sums = self._reduce(x)
        if self._sums is not None and self.calibrating:
            old = self._sums
            sums = (old[0] + sums[0], old[1] + sums[1], torch.minimum(old[2], sums[2]), old[3] + sums[3])
        self._sums = sums if self.calibrating else None
        signed = bool(self.signed)
        step, offset = self._initial(sums, signed)
        if self.init == "mse":
            if self._search is None or self._search[1] != signed:  # first batch, or the sign found since: start over
                self._search = (SquaredErrorSearch(step), signed)
            qmin, qmax = self.code_range(signed)
            rows = x.flatten(1) if self.per_channel else x.reshape(1, -1)
            step = self._search[0].add(rows, lambda v, s: Q.lsq_quantize(v, s, qmin, qmax, 1.0, offset))
            if not self.calibrating:
                self._search = None
        self.step.copy_(step.to(self.step.dtype))
        self.min_step.copy_(self.step * self.min_step_ratio)
        if self.offset is not None:
            self.offset.copy_(offset.to(self.offset.dtype))
        self.initialized = True

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints written before the floor existed: the floor of the step as saved.
        if prefix + "step" in state_dict and prefix + "min_step" not in state_dict:
            state_dict[prefix + "min_step"] = state_dict[prefix + "step"] * self.min_step_ratio
        super()._load_from_state_dict(state_dict, prefix, *args)

    def grad_scale(self, x: Tensor, signed: bool) -> float:
        """``g = 1 / sqrt(N * Qp)`` for input ``x`` (see the class docstring for ``N``)."""
        values = x[0].numel() if self.activations else x.numel() // self.step.numel()
        return Q.lsq_grad_scale(values, self.code_range(signed)[1])

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating or (self.training and not self.initialized):
            with torch.no_grad():
                self._observe(x)
        signed = self._is_signed(x)
        step, offset = self.step, self.offset
        if not self.initialized:  # evaluation before any initialisation: use the rule, store nothing
            step, offset = self._initial(self._reduce(x), signed)
        if self.per_channel:
            step = step.view(-1, *([1] * (x.dim() - 1)))
        qmin, qmax = self.code_range(signed)
        return Q.lsq_quantize(x, step, qmin, qmax, self.grad_scale(x, signed), offset)

    def get_extra_state(self) -> dict[str, Any]:
        return {"signed": self.signed, "initialized": self.initialized, "enabled": self.enabled}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.signed = state["signed"]
        self.initialized = state["initialized"]
        self.enabled = state["enabled"]

    def extra_repr(self) -> str:
        granularity = "channel" if self.per_channel else "tensor"
        offset = ", learned_offset" if self.offset is not None else ""
        init = ", init=mse" if self.init == "mse" else ""
        return f"bits={self.bits}, signed={self.signed}, per_{granularity}{offset}{init}"


def raise_to_floor(quantizers: list[LsqQuantizer]) -> None:
    """``step = max(step, min_step)`` for every quantizer, in one fused update per device."""
    if quantizers:
        with torch.no_grad():
            torch._foreach_maximum_([q.step for q in quantizers], [q.min_step for q in quantizers])


class LearnedStepSize(Method):
    """LSQ; reads ``method.learned_offset``, ``method.act_init``, ``method.low_bit_weight_decay``,
    ``method.min_step_ratio`` and ``quant.per_channel``."""

    name = "lsq"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.learned_offset = check_bool("method.learned_offset", cfg.method.get("learned_offset", False))
        self.low_bit_weight_decay = check_bool("method.low_bit_weight_decay",
                                               cfg.method.get("low_bit_weight_decay", True))
        self.act_init = check_choice("method.act_init", cfg.method.get("act_init", "lsq"), INITS)
        self.min_step_ratio = check_number("method.min_step_ratio", cfg.method.get("min_step_ratio", MIN_STEP_RATIO),
                                           0, 1, low_closed=True, high_closed=False)
        self._floored: list[LsqQuantizer] | None = None

    def weight_decay_factor(self) -> float:
        """LSQ's weight decay for this precision relative to full precision's: 1/4 at 2 weight bits
        (and 1), 1/2 at 3, 1 above (1 everywhere with ``method.low_bit_weight_decay=false``)."""
        if not self.low_bit_weight_decay or self.weight_bits >= 4:
            return 1.0
        return 0.5 if self.weight_bits == 3 else 0.25

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """The base groups with the weight decay scaled by :meth:`weight_decay_factor`."""
        factor = self.weight_decay_factor()
        if factor != 1.0 and weight_decay:
            log.info("lsq: weight decay %g (optim.weight_decay x %g at %d-bit weights, as in the LSQ paper; "
                     "method.low_bit_weight_decay=false keeps it)", weight_decay * factor, factor, self.weight_bits)
        return super().param_groups(model, weight_decay * factor)

    def weight_quantizer(self, layer: nn.Module, bits: int) -> LsqQuantizer:
        channels = layer.weight.shape[0] if self.cfg.quant.per_channel else None
        return LsqQuantizer(bits, signed=True, channels=channels, min_step_ratio=self.min_step_ratio)

    def input_quantizer(self, layer: nn.Module, bits: int) -> LsqQuantizer:
        return LsqQuantizer(bits, signed=None, activations=True, learned_offset=self.learned_offset,
                            init=self.act_init, min_step_ratio=self.min_step_ratio)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Raise every learned step to its floor (none with ``method.min_step_ratio=0``)."""
        if self.min_step_ratio == 0:
            return
        if self._floored is None:
            self._floored = [m for m in model.modules() if isinstance(m, LsqQuantizer)]
        raise_to_floor(self._floored)

    def scalars(self, model: nn.Module) -> dict[str, float]:
        """Adds ``lsq/step/<layer>/{weight,input}`` (the mean over channels for per-channel steps),
        ``lsq/offset/<layer>/input`` and ``lsq/steps_at_floor`` (steps, channels counted singly,
        held at their floor) to the quantized fractions."""
        out = super().scalars(model)
        at_floor = []
        for name, layer in quant_layers(model):
            for role, quantizer in (("weight", layer.weight_quant), ("input", layer.input_quant)):
                if isinstance(quantizer, LsqQuantizer):
                    out[f"lsq/step/{name}/{role}"] = quantizer.step.detach().mean().item()
                    if quantizer.offset is not None:
                        out[f"lsq/offset/{name}/{role}"] = quantizer.offset.item()
                    if self.min_step_ratio > 0 and quantizer.initialized:
                        at_floor.append((quantizer.step <= quantizer.min_step).sum())
        if self.min_step_ratio > 0:
            out["lsq/steps_at_floor"] = float(torch.stack(at_floor).sum()) if at_floor else 0.0  # one host sync
        return out
