"""Validation of a composed run config: every bad value becomes a one-line :class:`QnnrunError`."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from qnnrun.errors import QnnrunError
from qnnrun.quant.convert import FLOAT_BITS, LAYER_POLICIES

VALID_BITS = "integers 1-8, or 32 for float"
PRECISIONS = ("fp32", "bf16")
ON_NAN = ("stop", "skip_batch")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_bits(key: str, value: Any) -> int:
    """``value`` as bits, or a QnnrunError naming ``key``, the value and the valid range."""
    if not _is_int(value) or not (1 <= value <= 8 or value == FLOAT_BITS):
        raise QnnrunError(f"{key}={value!r} is not a valid bit width: valid are {VALID_BITS}")
    return value


def _check_int(key: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise QnnrunError(f"{key}={value!r} is not valid: expected an integer >= {minimum}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if str(value) not in choices:
        raise QnnrunError(f"{key}={value!r} is not valid: valid are {', '.join(choices)}")


def validate_quant(cfg: DictConfig) -> None:
    """Check ``bits`` and ``quant`` (shared by train and bops)."""
    check_bits("bits.w", cfg.bits.w)
    check_bits("bits.a", cfg.bits.a)
    _check_choice("quant.first_layer", cfg.quant.first_layer, LAYER_POLICIES)
    _check_choice("quant.last_layer", cfg.quant.last_layer, LAYER_POLICIES)
    _check_choice("quant.image_input_bits", cfg.quant.image_input_bits, ("8", "32"))
    _check_choice("quant.estimator", cfg.quant.estimator, ("clipped", "ste"))
    _check_int("quant.calib_batches", cfg.quant.calib_batches, 0)
    _check_choice("quant.init", cfg.quant.get("init", "maxabs"), ("maxabs", "mmse"))
    if not isinstance(cfg.quant.get("fold_bn", False), bool):
        raise QnnrunError(f"quant.fold_bn={cfg.quant.fold_bn!r} is not valid: valid are true, false")
    if cfg.quant.get("init", "maxabs") == "mmse":
        for key, value in (("bits.w", cfg.bits.w), ("bits.a", cfg.bits.a)):
            if value == 1:
                raise QnnrunError(f"{key}=1 is not valid with quant.init=mmse (the affine quantizer keeps a "
                                  f"zero level): valid are 2-8 or 32, or quant.init=maxabs")
    momentum = cfg.quant.ema_momentum
    if not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
        raise QnnrunError(f"quant.ema_momentum={momentum!r} is not valid: expected a number in (0, 1]")


def validate_train(cfg: DictConfig) -> None:
    """Check a composed ``train`` config before anything is built."""
    validate_quant(cfg)
    _check_int("trainer.epochs", cfg.trainer.epochs, 0)
    _check_int("trainer.devices", cfg.trainer.get("devices", 1), 1)
    _check_int("trainer.eval_every", cfg.trainer.eval_every, 1)
    _check_int("trainer.num_threads", cfg.trainer.num_threads, 0)
    _check_int("seed", cfg.seed, 0)
    _check_int("dataset.batch_size", cfg.dataset.batch_size, 1)
    _check_choice("trainer.precision", cfg.trainer.precision, PRECISIONS)
    _check_choice("trainer.on_nan", cfg.trainer.get("on_nan", "stop"), ON_NAN)
    for key in ("init_from", "resume"):
        value = cfg[key]
        if not (value is None or isinstance(value, str) or (key == "resume" and isinstance(value, bool))):
            valid = "null or a checkpoint path" if key == "init_from" else "true, false or a checkpoint/run path"
            raise QnnrunError(f"{key}={value!r} is not valid: expected {valid}")
    lr = cfg.optim.lr
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        raise QnnrunError(f"optim.lr={lr!r} is not valid: expected a positive number")
