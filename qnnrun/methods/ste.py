"""``method=ste``: direct quantization with the straight-through estimator (the NBN paper's baseline).

Every quantizable layer is quantized from step 0 (from scratch or from a float checkpoint) and
trained through the estimator. Weights: symmetric uniform, per output channel by default
(``quant.per_channel``), range from the current weights' max ``|w|`` at every step (mean ``|w|``
at 1 bit, where the quantizer is ``sign``). Activations (the input of each quantized layer):
uniform, unsigned when the calibration batches hold no negative value (after ReLU), else signed;
range from an exponential moving average of max ``|x|`` in training, fixed in evaluation.

``quant.init=mmse`` uses the NBN paper's affine quantizer instead (:class:`AffineQuantizer`):
weights and activations get a scale and an integer zero point that minimise the squared error,
found once at calibration (weights on the tensor, activations on a histogram of the
calibration batches) and then fixed. ``quant.fold_bn=true`` folds each BatchNorm into the layer
before it at build time, before any quantization parameter is computed.
"""

from __future__ import annotations

from torch import Tensor, nn

from qnnrun.methods.base import Method
from qnnrun.quant.fold import batchnorm_pairs, fold_batchnorm
from qnnrun.quant.quantizers import AffineQuantizer, Quantizer, UniformQuantizer


class DirectSTE(Method):
    name = "ste"
    quant_options = frozenset({"per_channel", "narrow_range", "estimator", "ema_momentum", "init", "fold_bn"})

    @property
    def mmse(self) -> bool:
        """Whether ``quant.init=mmse`` asks for the affine MMSE quantizer (else max-abs uniform)."""
        return self.cfg.quant.init == "mmse"

    def build(self, model: nn.Module, example_input: Tensor) -> nn.Module:
        if self.quantizes and self.cfg.quant.fold_bn:
            fold_batchnorm(model, batchnorm_pairs(model, example_input))
        return super().build(model, example_input)

    def weight_quantizer(self, layer: nn.Module, bits: int) -> Quantizer:
        quant = self.cfg.quant
        if self.mmse:
            channels = layer.weight.shape[0] if quant.per_channel else None
            return AffineQuantizer(bits, source="tensor", channels=channels, estimator=quant.estimator)
        return UniformQuantizer(
            bits,
            signed=True,
            channels=layer.weight.shape[0] if quant.per_channel else None,
            range_mode="dynamic",
            narrow=quant.narrow_range,
            estimator=quant.estimator,
        )

    def input_quantizer(self, layer: nn.Module, bits: int) -> Quantizer:
        quant = self.cfg.quant
        if self.mmse:
            return AffineQuantizer(bits, source="histogram", estimator=quant.estimator)
        return UniformQuantizer(
            bits,
            signed=None,
            range_mode="ema",
            momentum=quant.ema_momentum,
            narrow=quant.narrow_range,
            estimator=quant.estimator,
        )
