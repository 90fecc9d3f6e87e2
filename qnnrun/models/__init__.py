"""Float model definitions and the registry that builds them from a ``model`` config group.

Every builder takes the keyword arguments ``in_channels``, ``num_classes`` and ``image_size``
(from the data set) plus its own options (from ``conf/model/<name>.yaml``), and returns a
plain ``nn.Module`` mapping ``[B, C, H, W]`` images to ``[B, num_classes]`` logits. Convs and
linears are ordinary ``nn.Conv2d`` / ``nn.Linear`` submodules so the quantization pass can
swap them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from qnnrun.errors import QnnrunError
from qnnrun.models.aqe_convnet import aqe_convnet
from qnnrun.models.lenet import LeNet5
from qnnrun.models.mlp import MLP
from qnnrun.models.nbn_cnn import NBNCNN
from qnnrun.models.resnet_cifar import resnet20, resnet32, resnet56
from qnnrun.models.torchvision_models import mobilenet_v2, resnet18, resnet34, resnet50
from qnnrun.models.vgg import vgg_small

__all__ = ["DATA_KWARGS", "MODELS", "build_model", "model_options"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "nbn_cnn": NBNCNN,
    "vgg_small": vgg_small,
    "aqe_convnet": aqe_convnet,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
}

# Supplied by the data set rather than by the model config.
DATA_KWARGS = ("in_channels", "num_classes", "image_size")
# Options renamed since runs were saved with them: a saved config's old name still builds its model.
RENAMED = {("vgg_small", "width"): "width_mult", ("aqe_convnet", "width"): "width_mult"}
# Each option name has one meaning across models (a test checks that the builders agree): what is
# valid for each kind of option, by the builder's annotation.
DROPOUT_OPTIONS = ("dropout", "input_dropout")


def check_model_option(name: str, option: str, value: Any, annotation: str) -> None:
    """Raise a one-line QnnrunError when ``value`` is not valid for ``model.<option>`` of model
    ``name``: a count (``int``) >= 1, a multiplier (``float``) > 0, a dropout rate in [0, 1), a
    list of counts, a bool; string choices are checked by the builders themselves."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        valid = "a positive integer (channels)"
    elif annotation == "float" and option in DROPOUT_OPTIONS:
        ok, valid = is_number and 0 <= value < 1, "a probability in [0, 1)"
    elif annotation == "float":
        ok, valid = is_number and value > 0, "a multiplier > 0"
    elif annotation == "Sequence[int]":
        ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        valid = "a list of positive integers (channels), e.g. [256, 256]"
    elif annotation == "bool":
        ok, valid = isinstance(value, bool), "true or false"
    else:
        return
    if not ok:
        raise QnnrunError(f"model.{option}={value!r} is not valid: expected {valid} (model {name})")


def model_options(name: str) -> dict[str, Any]:
    """The config options of model ``name`` with their defaults (``DATA_KWARGS`` excluded)."""
    parameters = inspect.signature(MODELS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in DATA_KWARGS}


def build_model(
    cfg: Mapping[str, Any], *, in_channels: int, num_classes: int, image_size: int
) -> nn.Module:
    """Build the model named by ``cfg.name`` with the remaining keys of ``cfg`` as options.

    Args:
        cfg: The ``model`` config group (DictConfig or dict): ``name`` plus builder options.
        in_channels: Channels of the input images.
        num_classes: Number of output logits.
        image_size: Height (= width) of the input images.

    Returns:
        A module mapping ``[B, in_channels, image_size, image_size]`` to ``[B, num_classes]``.

    Raises:
        QnnrunError: For an unknown model name or an option the model does not take.
    """
    if isinstance(cfg, DictConfig):
        options = OmegaConf.to_container(cfg, resolve=True)
    else:
        options = dict(cfg)
    name = options.pop("name", None)
    if name not in MODELS:
        raise QnnrunError(f"unknown model '{name}': valid models are {', '.join(sorted(MODELS))}")
    for (model, old), new in RENAMED.items():
        if model == name and old in options and new not in options:
            options[new] = options.pop(old)
    valid = sorted(model_options(name))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise QnnrunError(
            f"model '{name}' has no option '{unknown[0]}': "
            f"valid options are {', '.join(valid) or '(none)'}"
        )
    annotations = {p.name: str(p.annotation) for p in inspect.signature(MODELS[name]).parameters.values()}
    for option, value in options.items():
        check_model_option(name, option, value, annotations[option])
    return MODELS[name](
        in_channels=in_channels, num_classes=num_classes, image_size=image_size, **options
    )
