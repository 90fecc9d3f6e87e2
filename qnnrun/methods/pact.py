"""``method=pact``: parameterized clipping activation (Choi et al., "PACT: Parameterized Clipping
Activation for Quantized Neural Networks", 2018).

Each quantized layer's input is ``clamp(x, 0, alpha)`` quantized to ``2^k - 1`` steps of
``alpha / (2^k - 1)``, with a learned clipping level ``alpha`` per layer (``method.alpha_init``,
default 10 as in the paper) whose gradient is the sum of the incoming gradient where ``x >= alpha``
(:func:`qnnrun.quant.functional.pact_quantize`). ``method.alpha_init=mse`` starts every ``alpha``
from the data instead, for fine-tuning a trained float net: at the level with the least squared
quantization error over the calibration batches, searched among ``MSE_GRID`` times the level that
LSQ's step rule gives on the first batch (``2 mean|x| sqrt(Qp)``, ``Qp`` the positive codes), the
same search as LSQ's ``method.act_init=mse``: on an input with no negative value the two start at
the same quantization grid (``alpha = Qp * step``). ``method.alpha_decay`` adds the L2 penalty
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
from qnnrun.errors import QnnrunError
from qnnrun.methods.base import Method
from qnnrun.methods.dorefa import DorefaWeightQuantizer
from qnnrun.quant import functional as Q
from qnnrun.quant.calibrate import SquaredErrorSearch
from qnnrun.quant.layers import Quantizer, quant_layers


class PactQuantizer(Quantizer):
    """PACT activation quantizer with a learned clipping level ``alpha`` (0-d ``nn.Parameter``).

    Args:
        bits: 1 to 8 (2 to 8 for an input with negative values).
        alpha_init: starting clipping level (> 0, units of the input), or ``"mse"``: the level with
            the least squared quantization error, found over all calibration batches (see
            ``Method.prepare``), else on the first training input; an evaluation before that
            searches on each input and stores nothing.

    The sign is detected like :class:`UniformQuantizer`'s: signed once a calibration batch (or,
    without calibration, the first input) holds a negative value.
    """

    def __init__(self, bits: int, alpha_init: float | str = 10.0) -> None:
        super().__init__()
        if alpha_init != "mse" and not (isinstance(alpha_init, (int, float)) and alpha_init > 0):
            raise ValueError(f"alpha_init={alpha_init!r}: a level > 0 or 'mse'")
        self.bits = bits
        self.init = "mse" if alpha_init == "mse" else "fixed"
        self.alpha = nn.Parameter(torch.tensor(1.0 if alpha_init == "mse" else float(alpha_init)))
        self.signed: bool | None = None
        self.initialized = self.init == "fixed"
        self._search: tuple[SquaredErrorSearch, bool] | None = None  # MSE start over calibration, its sign

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
            self._search = (SquaredErrorSearch(reference), signed)
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
        return f"bits={self.bits}, signed={self.signed}{init}"


class PACT(Method):
    """PACT; reads ``method.alpha_init`` (a level, or ``mse``) and ``method.alpha_decay``."""

    name = "pact"
    calibrate_with_batch_statistics = True  # DoReFa weights are on [-1, 1], not the float net's scale

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        alpha_init = cfg.method.get("alpha_init", 10.0)
        if alpha_init != "mse":
            try:
                alpha_init = check_number("method.alpha_init", alpha_init, 0)
            except QnnrunError as error:
                raise QnnrunError(f"{error} or mse (the least-error start)") from None
        self.alpha_init: float | str = alpha_init
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
