"""``method=aqe``: the asymptotic-quantized estimator and MINW-Net (Chen et al., IEEE JSTSP 2020).

In training every quantized weight and activation is the mixture ``y = alpha * h(x) + (1 - alpha) * x``
with the backward rule ``dL/dx = 2 * alpha * dL/dy * 1{|x| <= 1}`` (at ``alpha = 0.5`` the hard-tanh
STE); evaluation uses ``h(x)`` alone. ``h`` by bit width (``bits.w`` for weights, ``bits.a`` for
the layer inputs, set apart for M-bit inputs / N-bit weights): 1 bit ``sign``; 2 bits ternary
``{-1, 0, 1}`` with threshold ``0.7 * mean|x|``; 3+ bits power-of-two levels ``{0, +-2^-p}``. No
scale factors: latent weights are clipped to ``[-1, 1]`` after every optimizer step and BatchNorm
supplies the scale. The ReLU swap, layer policy, output BatchNorm and the BinaryNet options come
from :class:`~qnnrun.methods.bnn.LatentWeightMethod`.

``method.alpha`` (default 0.5) may rise linearly per epoch to ``method.alpha_end`` (default
``null``: constant), the asymptotic schedule towards ``h`` the paper's name refers to.
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from qnnrun.config import check_number
from qnnrun.errors import QnnrunError
from qnnrun.methods.bnn import LatentWeightMethod
from qnnrun.quant.quantizers import AsymptoticQuantizer


def level_kind(bits: int) -> str:
    """AQE's ``h`` for ``bits``: ``sign`` (1), ``ternary`` (2), ``pow2`` (3 and more)."""
    return "sign" if bits == 1 else "ternary" if bits == 2 else "pow2"


class AsymptoticQuantizedEstimator(LatentWeightMethod):
    name = "aqe"
    quant_options = frozenset({"ema_momentum"})  # of the binarisation thresholds

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.alpha_start = check_number("method.alpha", cfg.method.alpha, 0, 1)
        alpha_end = cfg.method.alpha_end
        self.alpha_end = None if alpha_end is None else check_number("method.alpha_end", alpha_end)
        if self.alpha_end is not None and not self.alpha_start <= self.alpha_end <= 1:
            raise QnnrunError(f"method.alpha_end={self.alpha_end} is not valid: expected null or a number in "
                              f"[method.alpha={self.alpha_start}, 1]")
        self.alpha = self.alpha_start
        if self.alpha_end is not None:
            self.epoch_schedule = "alpha's rise to method.alpha_end"

    def weight_quantizer(self, layer: nn.Module, bits: int) -> AsymptoticQuantizer:
        return AsymptoticQuantizer(level_kind(bits), bits, self.alpha)

    def input_quantizer(self, layer: nn.Module, bits: int) -> AsymptoticQuantizer:
        return AsymptoticQuantizer(level_kind(bits), bits, self.alpha,
                                   threshold_momentum=float(self.cfg.quant.ema_momentum))

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Set ``alpha`` for this epoch: constant, or linear from ``alpha`` to ``alpha_end``."""
        if self.alpha_end is not None:
            self.set_alpha(model, self.alpha_start + (self.alpha_end - self.alpha_start) * epoch / max(1, epochs - 1))

    def set_alpha(self, model: nn.Module, alpha: float) -> None:
        """Give every AQE quantizer of ``model`` the mixture weight ``alpha`` (in [0, 1])."""
        self.alpha = alpha
        for module in model.modules():
            if isinstance(module, AsymptoticQuantizer):
                module.alpha = alpha

    def scalars(self, model: nn.Module) -> dict[str, float]:
        return {**super().scalars(model), "alpha": self.alpha}
