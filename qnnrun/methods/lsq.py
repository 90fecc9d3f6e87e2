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
from torch import nn

from qnnrun.config import check_bool, check_choice, check_number
from qnnrun.methods.base import Method
from qnnrun.quant.layers import quant_layers
from qnnrun.quant.learned import INITS, LsqQuantizer

log = logging.getLogger("qnnrun")


def raise_to_floor(quantizers: list[LsqQuantizer]) -> None:
    """``step = max(step, min_step)`` for every quantizer, in one fused update per device."""
    if quantizers:
        with torch.no_grad():
            torch._foreach_maximum_([q.step for q in quantizers], [q.min_step for q in quantizers])


class LearnedStepSize(Method):
    """LSQ; reads ``method.learned_offset``, ``method.act_init``, ``method.low_bit_weight_decay``,
    ``method.min_step_ratio`` and ``quant.per_channel``."""

    name = "lsq"
    quant_options = frozenset({"per_channel"})
    # The paper starts each step from "the first batch of activations": as training computes them, with
    # batch statistics. A net trained from scratch has running statistics (0, 1), whose activations
    # gave input steps 0.25x-1.2x LSQ's rule (digits MLP, ResNet-20), small enough for the first update
    # to carry the 8-bit classifier input's MSE step below zero.
    calibrate_with_batch_statistics = True

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.learned_offset = check_bool("method.learned_offset", cfg.method.learned_offset)
        self.low_bit_weight_decay = check_bool("method.low_bit_weight_decay",
                                               cfg.method.low_bit_weight_decay)
        self.act_init = check_choice("method.act_init", cfg.method.act_init, INITS)
        self.min_step_ratio = check_number("method.min_step_ratio", cfg.method.min_step_ratio,
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
