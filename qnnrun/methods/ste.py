"""``method=ste``: direct quantization with the straight-through estimator (the NBN paper's baseline).

Every quantizable layer is quantized from step 0 (from scratch or from a float checkpoint) and
trained through the estimator. Weights: symmetric uniform, per output channel by default
(``quant.per_channel``), range from the current weights' max ``|w|`` at every step (mean ``|w|``
at 1 bit, where the quantizer is ``sign``). Activations (the input of each quantized layer):
uniform, unsigned when the calibration batches hold no negative value (after ReLU), else signed;
range from an exponential moving average of max ``|x|`` in training, fixed in evaluation.
"""

from __future__ import annotations

from torch import nn

from qnnrun.methods.base import Method
from qnnrun.quant.layers import UniformQuantizer


class DirectSTE(Method):
    name = "ste"

    def weight_quantizer(self, layer: nn.Module, bits: int) -> UniformQuantizer:
        quant = self.cfg.quant
        return UniformQuantizer(
            bits,
            signed=True,
            channels=layer.weight.shape[0] if quant.per_channel else None,
            range_mode="dynamic",
            narrow=quant.narrow_range,
            estimator=quant.estimator,
        )

    def input_quantizer(self, layer: nn.Module, bits: int) -> UniformQuantizer:
        quant = self.cfg.quant
        return UniformQuantizer(
            bits,
            signed=None,
            range_mode="ema",
            momentum=quant.ema_momentum,
            narrow=quant.narrow_range,
            estimator=quant.estimator,
        )
