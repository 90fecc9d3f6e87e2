"""Quantization methods: one small class per ``method=...``, all sharing :class:`Method`'s hooks."""

from __future__ import annotations

from omegaconf import DictConfig

from qnnrun.errors import QnnrunError
from qnnrun.methods.aqe import AsymptoticQuantizedEstimator
from qnnrun.methods.base import Method
from qnnrun.methods.bnn import BinarizedNet, QuantizedNet
from qnnrun.methods.dorefa import DoReFa
from qnnrun.methods.fp import FloatMethod
from qnnrun.methods.lsq import LearnedStepSize
from qnnrun.methods.pact import PACT
from qnnrun.methods.progressive import FilterByFilter, LayerByLayer, NeuronByNeuron
from qnnrun.methods.sq import StochasticQuantization
from qnnrun.methods.ste import DirectSTE
from qnnrun.methods.uniq import Uniq

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (FloatMethod, DirectSTE, StochasticQuantization, Uniq,
                                                          BinarizedNet, QuantizedNet, AsymptoticQuantizedEstimator,
                                                          LearnedStepSize, DoReFa, PACT,
                                                          LayerByLayer, FilterByFilter, NeuronByNeuron)}


def fixed_bits(name: str) -> int | None:
    """The width method ``name`` runs at whatever ``bits`` says (fp 32, bnn 1); None for the other
    methods and for a name no method has."""
    method = METHODS.get(name)
    return None if method is None else method.fixed_bits


def build_method(cfg: DictConfig) -> Method:
    """The method named by ``cfg.method.name``, configured from the whole run config."""
    name = cfg.method.name
    if name not in METHODS:
        raise QnnrunError(f"unknown method '{name}': valid methods are {', '.join(sorted(METHODS))}")
    return METHODS[name](cfg)


__all__ = ["METHODS", "Method", "build_method", "fixed_bits"]
