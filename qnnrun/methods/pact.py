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
first layer) is clipped symmetrically to ``[-alpha, alpha]``. The image input's ``alpha`` starts at its
largest ``|x|`` over the calibration batches (10 is a level for ReLU outputs). The clip sits on each quantized
layer's input, as every method's quantizer does here; PACT's reference ResNet puts it after the
residual sum (docs/baselines.md).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.config import check_number
from qnnrun.methods.base import Method
from qnnrun.methods.dorefa import check_clip_level
from qnnrun.quant.layers import clip_levels
from qnnrun.quant.learned import PactQuantizer
from qnnrun.quant.quantizers import DorefaWeightQuantizer


class PACT(Method):
    """PACT; reads ``method.alpha_init`` (a level, or ``mse``) and ``method.alpha_decay``."""

    name = "pact"
    calibrate_with_batch_statistics = True  # DoReFa weights are on [-1, 1], not the float net's scale

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.alpha_init = check_clip_level("method.alpha_init", cfg.method.alpha_init)
        self.alpha_decay = check_number("method.alpha_decay", cfg.method.alpha_decay, 0, low_closed=True)

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
        out.update({f"pact/alpha/{name}": alpha for name, alpha in clip_levels(model).items()})
        return out
