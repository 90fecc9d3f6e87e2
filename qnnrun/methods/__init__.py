"""Quantization methods: one small class per ``method=...``, all sharing :class:`Method`'s hooks."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from qnnrun.config import method_quant_defaults, override_text
from qnnrun.errors import QnnrunError
from qnnrun.methods.aqe import AsymptoticQuantizedEstimator
from qnnrun.methods.base import COMMON_QUANT_OPTIONS, Method
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


def ignored_quant_options(cfg: DictConfig) -> list[str]:
    """``quant.<key>=<value>`` for each ``quant.*`` option of ``cfg`` that its method does not read
    (:data:`~qnnrun.methods.base.COMMON_QUANT_OPTIONS` and :attr:`Method.quant_options` are what it
    reads) and that is set away from the method's own default (a ``quant.fold_bn=true`` given to lsq),
    sorted by key; none for a name no method has."""
    method = METHODS.get(cfg.method.name)
    if method is None:
        return []
    defaults = method_quant_defaults(cfg.method.name)
    unread = sorted(set(cfg.quant) - COMMON_QUANT_OPTIONS - method.quant_options)
    return [f"quant.{key}={override_text(cfg.quant[key])}" for key in unread if cfg.quant[key] != defaults[key]]


def warn_ignored_settings(cfg: DictConfig, log: logging.Logger) -> None:
    """Warn, once at the start of a run, in one line each: about ``bits`` that ``method=bnn`` (binary
    whatever they say) ignores, and about :func:`ignored_quant_options`, naming the method's own."""
    if cfg.method.name == "bnn" and (cfg.bits.w, cfg.bits.a) != (1, 1):
        log.warning("method=bnn is binary: bits.w=%s bits.a=%s ignored, running W1/A1 (method=qnn quantizes to k "
                    "bits)", cfg.bits.w, cfg.bits.a)
    ignored = ignored_quant_options(cfg)
    if ignored:
        own = ", ".join(sorted(METHODS[cfg.method.name].quant_options)) or "none"
        log.warning("method=%s does not read %s, ignored (the quant options of its own: %s)", cfg.method.name,
                    ", ".join(ignored), own)


def build_method(cfg: DictConfig) -> Method:
    """The method named by ``cfg.method.name``, configured from the whole run config."""
    name = cfg.method.name
    if name not in METHODS:
        raise QnnrunError(f"unknown method '{name}': valid methods are {', '.join(sorted(METHODS))}")
    return METHODS[name](cfg)


__all__ = ["METHODS", "Method", "build_method", "fixed_bits", "ignored_quant_options", "warn_ignored_settings"]
