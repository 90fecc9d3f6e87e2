"""Validation of a composed run config: every bad value becomes a one-line :class:`QnnrunError`."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qnnrun import CONFIG_DIR
from qnnrun.errors import QnnrunError
from qnnrun.quant.convert import BIT_WIDTHS, FLOAT_BITS, LAYER_POLICIES, QUANT_BITS, LayerBits, LayerRule
from qnnrun.quant.functional import ESTIMATORS
from qnnrun.schema import QuantConf

VALID_BITS = f"integers {QUANT_BITS[0]}-{QUANT_BITS[-1]}, or {FLOAT_BITS} for float"
PRECISIONS = ("fp32", "bf16")
ON_NAN = ("stop", "skip_batch")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_bits(key: str, value: Any) -> int:
    """``value`` as bits, or a QnnrunError naming ``key``, the value and the valid range."""
    if not _is_int(value) or value not in BIT_WIDTHS:
        raise QnnrunError(f"{key}={value!r} is not a valid bit width: valid are {VALID_BITS}")
    return value


def check_grad_bits(value: Any, lowest: int) -> int:
    """``method.grad_bits`` as an int: the bits of a method's quantized gradients, ``lowest`` to 16
    (the lowest width its gradient quantizer has a nonzero level at), or 32 for float gradients."""
    if not _is_int(value) or not (lowest <= value <= 16 or value == FLOAT_BITS):
        raise QnnrunError(f"method.grad_bits={value!r} is not valid: valid are integers {lowest}-16, "
                          f"or {FLOAT_BITS} (float)")
    return value


def check_int(key: str, value: Any, minimum: int, optional: bool = False) -> int | None:
    """``value`` as an integer >= ``minimum`` (``None`` allowed when ``optional``), or a QnnrunError."""
    if (value is None and optional) or (_is_int(value) and value >= minimum):
        return value
    expected = "null or an integer" if optional else "an integer"
    raise QnnrunError(f"{key}={value!r} is not valid: expected {expected} >= {minimum}")


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` as one of ``choices`` (compared as text), or a QnnrunError listing them."""
    if str(value) not in choices:
        raise QnnrunError(f"{key}={value!r} is not valid: valid are {', '.join(choices)}")
    return str(value)


def check_bool(key: str, value: Any) -> bool:
    """``value`` when it is true or false, else a QnnrunError."""
    if not isinstance(value, bool):
        raise QnnrunError(f"{key}={value!r} is not valid: valid are true, false")
    return value


def check_number(key: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_closed: bool = False, high_closed: bool = True) -> float:
    """``value`` as a finite float within the bounds given (``low`` excluded and ``high`` included by
    default), or a QnnrunError stating them, e.g. "expected a number in (0, 1]" (inf and nan are no
    setting of any option: where no bound excluded them, a run failed at its first step)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (isinstance(value, int) or math.isfinite(value))  # math.isfinite overflows on a huge int
    if ok and low is not None:
        ok = value >= low if low_closed else value > low
    if ok and high is not None:
        ok = value <= high if high_closed else value < high
    if ok:
        return float(value)
    if low is not None and high is not None:
        bound = f" in {'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"
    elif low is not None:
        bound = f" {'>=' if low_closed else '>'} {low:g}"
    elif high is not None:
        bound = f" {'<=' if high_closed else '<'} {high:g}"
    else:
        bound = ""
    # A typed option holds 1 as 1.0: shown as given on the command line.
    shown = f"{value:g}" if isinstance(value, float) and value.is_integer() else repr(value)
    finite = " finite" if isinstance(value, float) and not math.isfinite(value) else ""
    raise QnnrunError(f"{key}={shown} is not valid: expected a{finite} number{bound}")


def check_mmse_width(key: str, bits: int, init: str, float_valid: bool = True) -> None:
    """Refuse ``key=1`` (``bits``, a width in bits) with ``quant.init=mmse`` (``init``): the affine
    quantizer it fits keeps a zero level. The error names the widths valid instead: 2-8, with 32 (float)
    when ``float_valid``."""
    if init == "mmse" and bits == 1:
        valid = f"{QUANT_BITS[1]}-{QUANT_BITS[-1]}" + (f" or {FLOAT_BITS}" if float_valid else "")
        raise QnnrunError(f"{key}=1 is not valid with quant.init=mmse (the affine quantizer keeps a zero level): "
                          f"valid are {valid}, or quant.init=maxabs")


def layer_rules(cfg: DictConfig) -> list[LayerRule]:
    """``quant.layer_bits`` of the config as rules, in order: each ``pattern: bits`` (both sides) or
    ``pattern: {w: bits, a: bits}`` (a side left out keeps the run's ``bits.w`` / ``bits.a``).
    A bad entry is a QnnrunError naming it and what is valid."""
    value = cfg.quant.layer_bits or {}
    if not OmegaConf.is_dict(value) and not isinstance(value, dict):
        raise QnnrunError(f"quant.layer_bits={value!r} is not valid: expected a mapping from layer-name patterns "
                          f"to bits, e.g. {{layer3.*: 4, fc: {{w: 8, a: 8}}}}")
    rules = []
    for pattern, bits in value.items():
        key = f"quant.layer_bits[{pattern!r}]"
        if OmegaConf.is_dict(bits) or isinstance(bits, dict):
            extra = sorted(set(bits) - {"w", "a"})
            if extra or not bits:
                raise QnnrunError(f"{key}={OmegaConf.to_container(bits) if OmegaConf.is_dict(bits) else bits} is "
                                  f"not valid: expected bits or {{w: bits, a: bits}} (valid keys are w and a)")
            weight = check_bits(f"{key}.w", bits.get("w", cfg.bits.w))
            inputs = check_bits(f"{key}.a", bits.get("a", cfg.bits.a))
        else:
            weight = inputs = check_bits(key, bits)
        rules.append(LayerRule(str(pattern), LayerBits(weight, inputs)))
    return rules


def validate_quant(cfg: DictConfig) -> None:
    """Check ``bits`` and ``quant`` (shared by train and bops)."""
    check_bits("bits.w", cfg.bits.w)
    check_bits("bits.a", cfg.bits.a)
    check_choice("quant.first_layer", cfg.quant.first_layer, LAYER_POLICIES)
    check_choice("quant.last_layer", cfg.quant.last_layer, LAYER_POLICIES)
    check_choice("quant.image_input_bits", cfg.quant.image_input_bits, ("8", "32"))
    check_choice("quant.estimator", cfg.quant.estimator, ESTIMATORS)
    check_int("quant.calib_batches", cfg.quant.calib_batches, 0)
    check_int("quant.bn_reestimate_batches", cfg.quant.bn_reestimate_batches, 0)
    check_choice("quant.init", cfg.quant.init, ("maxabs", "mmse"))
    rules = layer_rules(cfg)
    widths = [("bits.w", cfg.bits.w), ("bits.a", cfg.bits.a)]
    widths += [(f"quant.layer_bits[{rule.pattern!r}]", bits) for rule in rules
               for bits in (rule.bits.weight, rule.bits.input)]
    for key, value in widths:
        check_mmse_width(key, value, cfg.quant.init)
    check_number("quant.ema_momentum", cfg.quant.ema_momentum, 0, 1)


@functools.cache
def _method_file(name: str) -> DictConfig | None:
    """``conf/method/<name>.yaml`` as loaded (read once per process), or ``None`` when there is none."""
    path = CONFIG_DIR / "method" / f"{name}.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def method_options(name: str) -> list[str] | None:
    """The options of ``method=<name>``, sorted: the keys of its ``conf/method/<name>.yaml`` but
    ``name``; ``None`` when there is no such file (``build_method`` reports an unknown name)."""
    loaded = _method_file(name)
    return None if loaded is None else sorted(set(loaded.method.keys()) - {"name"})


def override_text(value: Any) -> str:
    """``value`` as a command-line override writes it: ``true``, ``false``, ``null``, ``{fc1: 8}``,
    ``[30, 60]``, else ``str``."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {override_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(override_text(item) for item in value) + "]"
    return str(value)


def method_quant_defaults(name: str) -> dict[str, Any]:
    """The ``quant.*`` options ``method=<name>`` runs with where nothing else sets them: the schema's
    defaults with its ``conf/method/<name>.yaml``'s ``quant:`` over them (the schema's for a name with
    no config file)."""
    defaults = OmegaConf.structured(QuantConf)
    loaded = _method_file(name)
    if loaded is not None:
        defaults.merge_with(loaded.get("quant") or {})
    return OmegaConf.to_container(defaults)


def unused_method_options(cfg: DictConfig) -> list[str]:
    """The keys under ``cfg.method`` that the method has no option for, sorted (none for a method
    name with no config file).

    They reach ``cfg.method`` through a preset written for another method (``experiment=bnn_cifar10
    method=fp`` keeps ``method.loss``) or a ``+method.<key>`` override, and the method never reads them.
    """
    options = method_options(cfg.method.name)
    return [] if options is None else sorted(set(cfg.method.keys()) - set(options) - {"name"})


def warn_unused_method_options(cfg: DictConfig, log: logging.Logger) -> None:
    """Warn in one line about :func:`unused_method_options`, naming them and the method's options."""
    unused = unused_method_options(cfg)
    if unused:
        log.warning("method=%s has no option %s, ignored (its options: %s)", cfg.method.name,
                    ", ".join(f"method.{key}={override_text(cfg.method[key])}" for key in unused),
                    ", ".join(method_options(cfg.method.name)) or "none")


def validate_train(cfg: DictConfig) -> None:
    """Check a composed ``train`` config before anything is built."""
    validate_quant(cfg)
    check_int("trainer.epochs", cfg.trainer.epochs, 0)
    check_int("trainer.devices", cfg.trainer.devices, 1)
    check_int("trainer.eval_every", cfg.trainer.eval_every, 1)
    check_int("trainer.num_threads", cfg.trainer.num_threads, 0)
    check_int("trainer.log_every_steps", cfg.trainer.log_every_steps, 0)
    check_int("seed", cfg.seed, 0)
    check_int("dataset.batch_size", cfg.dataset.batch_size, 1)
    check_choice("trainer.precision", cfg.trainer.precision, PRECISIONS)
    check_choice("trainer.on_nan", cfg.trainer.on_nan, ON_NAN)
    for key in ("init_from", "resume"):
        value = cfg[key]
        if not (value is None or isinstance(value, str) or (key == "resume" and isinstance(value, bool))):
            valid = "null or a checkpoint path" if key == "init_from" else "true, false or a checkpoint/run path"
            raise QnnrunError(f"{key}={value!r} is not valid: expected {valid}")
    if check_bool("extend", cfg.get("extend", False)) and cfg.resume in (None, False):
        raise QnnrunError("extend=true lengthens a run it resumes: give resume=RUN_FOLDER (or resume=true in the "
                          "run's folder) with the longer trainer.epochs; without it a new run would start")
    check_number("optim.lr", cfg.optim.lr, 0)
    validate_optim_and_sched(cfg)
    check_number("trainer.grad_clip", cfg.trainer.grad_clip, 0, low_closed=True, high=None)
    check_number("trainer.label_smoothing", cfg.trainer.label_smoothing, 0, 1, low_closed=True, high_closed=False)
    check_int("dataset.eval_batch_size", cfg.dataset.eval_batch_size, 1)
    distill = cfg.trainer.distill
    if distill.teacher is not None:
        check_number("trainer.distill.weight", distill.weight, 0, low_closed=True, high=None)
        check_number("trainer.distill.temperature", distill.temperature, 0, high=None)
    validate_dataset(cfg.dataset)


def validate_dataset(dataset: DictConfig) -> None:
    """Check the ``dataset`` options the chosen data set has (counts, per-channel statistics)."""
    for key in ("crop_padding", "num_workers"):
        if key in dataset:
            check_int(f"dataset.{key}", dataset[key], 0)
    for key, low in (("mean", None), ("std", 0.0)):
        values = dataset[key]
        if not OmegaConf.is_list(values):
            raise QnnrunError(f"dataset.{key}={values!r} is not valid: expected a list of numbers, one per channel")
        for index, value in enumerate(values):
            check_number(f"dataset.{key}[{index}]", value, low, None)


def validate_optim_and_sched(cfg: DictConfig) -> None:
    """Check the numbers of ``optim`` and ``sched`` that the chosen options have."""
    optim, sched = cfg.optim, cfg.sched
    check_number("optim.weight_decay", optim.weight_decay, 0, low_closed=True, high=None)
    if "momentum" in optim:
        check_number("optim.momentum", optim.momentum, 0, 1, low_closed=True, high_closed=False)
    if "betas" in optim:
        betas = optim.betas
        if not (OmegaConf.is_list(betas) and len(betas) == 2):
            raise QnnrunError(f"optim.betas={betas!r} is not valid: expected two numbers in [0, 1)")
        for index, beta in enumerate(betas):
            check_number(f"optim.betas[{index}]", beta, 0, 1, low_closed=True, high_closed=False)
    check_number("sched.warmup_epochs", sched.warmup_epochs, 0, low_closed=True, high=None)
    if "min_lr_ratio" in sched:
        check_number("sched.min_lr_ratio", sched.min_lr_ratio, 0, 1, low_closed=True)
    if "final_lr_ratio" in sched:
        check_number("sched.final_lr_ratio", sched.final_lr_ratio, 0, 1)
    if "gamma" in sched:
        check_number("sched.gamma", sched.gamma, 0, 1)
    if "milestones" in sched:
        milestones = sched.milestones
        if not (OmegaConf.is_list(milestones) and all(_is_int(m) and m >= 0 for m in milestones)
                and list(milestones) == sorted(milestones)):
            raise QnnrunError(f"sched.milestones={milestones!r} is not valid: expected increasing epochs >= 0, "
                              f"e.g. [30, 60]")
