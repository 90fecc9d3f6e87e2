"""``method=fp``: no quantization, the float reference every table needs."""

from __future__ import annotations

import logging

from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.methods.base import Method, matches_no_layer, no_layer_matches
from qnnrun.quant.convert import FLOAT_BITS, forward_order

log = logging.getLogger("qnnrun")


class FloatMethod(Method):
    """Trains the float model as it is; ``bits`` and ``quant.layer_bits`` are ignored (counted as 32 in
    BOPs and size), so that a sweep over methods shares one set of rules. A pattern that names no layer
    of the model gets a warning (a typo is no less a typo in the float run; not an error, so that a
    float run saved with one still evaluates, exports and resumes)."""

    name = "fp"
    fixed_bits = FLOAT_BITS

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.ignored_rules, self.layer_rules = self.layer_rules, []

    def build(self, model: nn.Module, example_input: Tensor) -> nn.Module:
        if self.ignored_rules:
            names = forward_order(model, example_input)
            for rule in self.ignored_rules:
                if matches_no_layer(rule.pattern, names):
                    log.warning("%s (method=fp ignores the rules)", no_layer_matches(rule.pattern, self.cfg.model.name,
                                                                                    names))
        return super().build(model, example_input)
