"""``method=dorefa``: DoReFa-Net (Zhou et al., "DoReFa-Net: Training Low Bitwidth Convolutional Neural
Networks with Low Bitwidth Gradients", 2016).

Weights ``2 * quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1`` (one bit: ``sign(w) * mean|w|``),
inputs ``quantize_k(clamp(x, 0, 1))``, gradients through the rounding by STE
(:mod:`qnnrun.quant.functional`). ``method.grad_bits`` below 32 also quantizes, stochastically and
with the paper's per-sample max normalisation, the gradient that flows back into each quantized
layer's output (where the DoReFa code applies its ``fg``). First and last layer stay float (the last
one's input clipped to ``[0, 1]``, ``method.clip_last_input``, as the code's ``nonlin``), and the
image input stays float even where a first-layer policy or ``quant.layer_bits`` rule quantizes that
layer's weights (``quant.image_input_bits=32``; ``[0, 1]`` cannot hold a normalised image: at 8 bits
and the paper's ``[0, 1]`` the image input is refused).

``method.act_clip`` (not in the paper; default 1, the paper's ``[0, 1]``) clips each quantized
layer's input at another fixed level ``c`` instead: ``c * quantize_k(clamp(x / c, 0, 1))``, the
paper's quantizer on the input divided by ``c``. With ``mse`` each layer's ``c`` is the level with
the least squared quantization error over the calibration batches (PACT's ``method.alpha_init=mse``
search), held fixed during training (:class:`~qnnrun.quant.learned.PactQuantizer` with
``learned=False``). It is for fine-tuning a trained float net, whose BatchNorm-ReLU outputs reach
far past 1: a network trained as DoReFa from scratch learns to keep its inputs on ``[0, 1]``, a
float net does not. Where a BatchNorm follows the quantized layer, ``c`` only rescales what it
normalises, so the trained net still runs on the paper's ``[0, 1]`` codes. An input that holds
negative values at calibration (the image, with ``quant.image_input_bits=8``) is clipped to
``[-c, c]``, the image's ``c`` starting at its largest ``|x|``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.config import check_bool, check_grad_bits, check_number
from qnnrun.errors import QnnrunError
from qnnrun.methods.base import Method
from qnnrun.quant import functional as Q
from qnnrun.quant.convert import FLOAT_BITS, forward_order, probe_forward
from qnnrun.quant.layers import clip_levels, quant_layers
from qnnrun.quant.learned import PactQuantizer
from qnnrun.quant.quantizers import DorefaActivationQuantizer, DorefaWeightQuantizer

log = logging.getLogger("qnnrun")
_WARNED: set[tuple[str, ...]] = set()  # the layer lists warned about (DoReFa.prepare)


class _OutputGradientQuantizer:
    """Forward hook that routes a layer's output through :func:`dorefa_gradient_quantizer`."""

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def __call__(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        return Q.dorefa_gradient_quantizer(output, self.bits)


def check_clip_level(key: str, value: Any) -> float | str:
    """A clipping level option (PACT's ``alpha_init``, DoReFa's ``act_clip``): a number > 0 (units of
    the layer input), or ``"mse"`` (the least-error level found at calibration)."""
    if value == "mse":
        return value
    try:
        return check_number(key, value, 0)
    except QnnrunError as error:
        raise QnnrunError(f"{error} or mse (the least-error level)") from None


# Leaves that pass a layer input on unchanged in value range (between the last ReLU and the last layer).
_BETWEEN = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout,
            nn.Identity)


def _clip_last_float_input(model: nn.Module, example_input: Tensor, leaves: list[str]) -> None:
    """When the last layer's input is float, replace the ``nn.ReLU`` that feeds it (through pooling,
    flatten or dropout only) by ``nn.Hardtanh(0, 1)``: DoReFa's ``nonlin`` before its float ``fct``
    (tensorpack ``alexnet-dorefa.py``, ``resnet-dorefa.py``: ``clip_by_value(x, 0, 1)`` when the
    activations are quantized). ``leaves``: the float model's leaf modules in forward order. A model
    whose last layer is fed otherwise (no such ReLU, or one that runs more than once per forward) is
    left as it is, with a warning."""
    layers = [name for name in leaves if isinstance(model.get_submodule(name), (nn.Conv2d, nn.Linear))
              or hasattr(model.get_submodule(name), "input_quant")]
    last = model.get_submodule(layers[-1])
    if getattr(last, "input_quant", None) is not None:
        return  # the last layer quantizes its input: the [0, 1] clip is its quantizer's
    feeder = None
    for name in reversed(leaves[:leaves.index(layers[-1])]):
        module = model.get_submodule(name)
        if isinstance(module, nn.ReLU):
            feeder = name
        if not isinstance(module, _BETWEEN):
            break
    calls: list[None] = []
    if feeder is not None:
        probe_forward(model, example_input, {model.get_submodule(feeder): lambda *_: calls.append(None)})
    if len(calls) != 1:
        log.warning("dorefa: the float last layer %s is not fed by a ReLU of its own, so its input is not clipped "
                    "to [0, 1] as in DoReFa's code (method.clip_last_input)", layers[-1])
        return
    model.set_submodule(feeder, nn.Hardtanh(0.0, 1.0))


class DoReFa(Method):
    """DoReFa; reads ``method.grad_bits`` (32 = float gradients) and ``method.act_clip`` (1 = the paper's
    ``[0, 1]``, another level, or ``mse``)."""

    name = "dorefa"
    calibrate_with_batch_statistics = True  # DoReFa weights are on [-1, 1], not the float net's scale

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.grad_bits = check_grad_bits(cfg.method.grad_bits, 1)  # at 1 bit each gradient is +-max|g| (per sample)
        self.act_clip = check_clip_level("method.act_clip", cfg.method.act_clip)
        self.clip_last_input = check_bool("method.clip_last_input", cfg.method.clip_last_input)

    def weight_quantizer(self, layer: nn.Module, bits: int) -> DorefaWeightQuantizer:
        return DorefaWeightQuantizer(bits)

    def input_quantizer(self, layer: nn.Module, bits: int) -> DorefaActivationQuantizer | PactQuantizer:
        if self.act_clip == 1.0:
            return DorefaActivationQuantizer(bits)
        return PactQuantizer(bits, self.act_clip, learned=False)

    def build(self, model: nn.Module, example_input: Tensor) -> nn.Module:
        clip = self.clip_last_input and self.act_bits != FLOAT_BITS and self.act_clip == 1.0
        leaves = forward_order(model, example_input, kinds=()) if clip else []  # the float model's: layers are leaves
        model = super().build(model, example_input)
        if clip:
            _clip_last_float_input(model, example_input, leaves)
        if self.grad_bits != FLOAT_BITS:
            for _, layer in quant_layers(model):
                if layer.weight_quant is not None:
                    layer.register_forward_hook(_OutputGradientQuantizer(self.grad_bits))
        return model

    def prepare(self, model: nn.Module, batches: Iterable[Tensor]) -> None:
        """Calibrate, then warn about layers whose inputs hold negative values: the ``[0, 1]`` clip
        zeroes them, a ReLU the float net did not have (a MobileNetV2 block's linear bottleneck)."""
        super().prepare(model, batches)
        signed = [name for name, layer in quant_layers(model)
                  if isinstance(layer.input_quant, DorefaActivationQuantizer) and layer.input_quant.negative_seen]
        if signed and tuple(signed) not in _WARNED:  # once per process and layers (sensitivity prepares often)
            _WARNED.add(tuple(signed))
            log.warning("dorefa: negative inputs at %s: method.act_clip=1 clips them to [0, 1] as DoReFa's "
                        "ReLU-fed nets do, so the quantized net zeroes what the float net passes on; "
                        "method.act_clip=mse quantizes them symmetrically",
                        ", ".join(signed[:5]) + (f" and {len(signed) - 5} more layers" if len(signed) > 5 else ""))

    def scalars(self, model: nn.Module) -> dict[str, float]:
        """Adds ``dorefa/clip/<layer>`` (each input's clipping level) to the quantized fractions
        when ``method.act_clip`` is not the paper's 1."""
        out = super().scalars(model)
        out.update({f"dorefa/clip/{name}": level for name, level in clip_levels(model).items()})
        return out
