"""``method=fp``: no quantization, the float reference every table needs."""

from __future__ import annotations

from omegaconf import DictConfig

from qnnrun.methods.base import Method
from qnnrun.quant.convert import FLOAT_BITS


class FloatMethod(Method):
    """Trains the float model as it is; ``bits`` and ``quant.layer_bits`` are ignored (counted as 32 in
    BOPs and size)."""

    name = "fp"
    fixed_bits = FLOAT_BITS

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.layer_rules = []
