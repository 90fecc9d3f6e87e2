"""``method=pact``: parameterized clipping activation (Choi et al., "PACT: Parameterized Clipping
Activation for Quantized Neural Networks", 2018).

Each quantized layer's input is ``clamp(x, 0, alpha)`` quantized to ``2^k - 1`` steps of
``alpha / (2^k - 1)``, with a learned clipping level ``alpha`` per layer (``method.alpha_init``,
default 10 as in the paper) whose gradient is the sum of the incoming gradient where ``x >= alpha``
(:func:`qnnrun.quant.functional.pact_quantize`). ``method.alpha_decay`` adds the L2 penalty
``alpha_decay / 2 * sum(alpha^2)`` to the loss (the penalty whose gradient is SGD weight decay;
PACT regularizes alpha like the weights; 0 turns it off). Weights are DoReFa's. First and last
layer at 8 bits; an input that holds negative values at calibration (the normalised image of the
first layer) is clipped symmetrically to ``[-alpha, alpha]``.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.config import check_number
from qnnrun.methods.base import Method
from qnnrun.methods.dorefa import DorefaWeightQuantizer
from qnnrun.quant import functional as Q
from qnnrun.quant.layers import Quantizer, quant_layers


class PactQuantizer(Quantizer):
    """PACT activation quantizer with a learned clipping level ``alpha`` (0-d ``nn.Parameter``).

    Args:
        bits: 1 to 8 (2 to 8 for an input with negative values).
        alpha_init: starting clipping level (> 0).

    The sign is detected like :class:`UniformQuantizer`'s: signed once a calibration batch (or,
    without calibration, the first input) holds a negative value.
    """

    def __init__(self, bits: int, alpha_init: float = 10.0) -> None:
        super().__init__()
        self.bits = bits
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.signed: bool | None = None

    def reset(self) -> None:
        """Forget the detected sign before a new calibration."""
        self.signed = None

    def forward(self, x: Tensor) -> Tensor:
        if self.signed is None or (self.calibrating and not self.signed):
            detected = bool((x.detach().amin() < 0).item())
            if not (self.calibrating or self.training):  # an evaluation before calibration stores nothing
                return Q.pact_quantize(x, self.alpha, self.bits, detected)
            self.signed = detected
        return Q.pact_quantize(x, self.alpha, self.bits, self.signed)

    def get_extra_state(self) -> dict[str, Any]:
        return {"signed": self.signed, "enabled": self.enabled}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.signed = state["signed"]
        self.enabled = state["enabled"]

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"


class PACT(Method):
    """PACT; reads ``method.alpha_init`` and ``method.alpha_decay``."""

    name = "pact"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.alpha_init = check_number("method.alpha_init", cfg.method.get("alpha_init", 10.0), 0)
        self.alpha_decay = check_number("method.alpha_decay", cfg.method.get("alpha_decay", 0.0), 0, low_closed=True)

    def weight_quantizer(self, layer: nn.Module, bits: int) -> DorefaWeightQuantizer:
        return DorefaWeightQuantizer(bits)

    def input_quantizer(self, layer: nn.Module, bits: int) -> PactQuantizer:
        return PactQuantizer(bits, self.alpha_init)

    def regularization(self, model: nn.Module) -> Tensor | None:
        """``alpha_decay / 2 * sum(alpha^2)`` over the PACT quantizers, or ``None`` when off."""
        if self.alpha_decay == 0:
            return None
        alphas = [m.alpha for m in model.modules() if isinstance(m, PactQuantizer)]
        if not alphas:
            return None
        return 0.5 * self.alpha_decay * torch.stack(alphas).square().sum()

    def scalars(self, model: nn.Module) -> dict[str, float]:
        """Adds ``pact/alpha/<layer>`` to the quantized fractions."""
        out = super().scalars(model)
        for name, layer in quant_layers(model):
            if isinstance(layer.input_quant, PactQuantizer):
                out[f"pact/alpha/{name}"] = layer.input_quant.alpha.item()
        return out
