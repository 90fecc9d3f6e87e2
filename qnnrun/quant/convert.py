"""Swap a float model's conv/linear layers for quantized ones under a layer policy."""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qnnrun.errors import QnnrunError
from qnnrun.quant.layers import QuantConv2d, QuantLayer, QuantLinear
from qnnrun.quant.quantizers import Quantizer

FLOAT_BITS = 32  # a layer side at 32 bits is float, not quantized
QUANT_BITS: tuple[int, ...] = tuple(range(1, 9))  # the integer widths a layer side can be quantized to
BIT_WIDTHS: tuple[int, ...] = (*QUANT_BITS, FLOAT_BITS)  # every valid bit width
LAYER_POLICIES = ("fp", "8", "same")


@dataclass(frozen=True)
class LayerBits:
    """Bits one layer runs at: ``weight`` and ``input`` (32 = float)."""

    weight: int
    input: int


@dataclass(frozen=True)
class LayerRule:
    """One entry of ``quant.layer_bits``: the layers whose qualified name matches ``pattern`` (a
    ``fnmatch`` glob, e.g. ``layer3.*``) run at ``bits``, whatever ``bits`` and the layer policy say."""

    pattern: str
    bits: LayerBits


def matching_rule(name: str, rules: list[LayerRule]) -> LayerRule | None:
    """The first of ``rules`` whose pattern matches layer ``name`` (case-sensitive), or ``None``."""
    return next((rule for rule in rules if fnmatch.fnmatchcase(name, rule.pattern)), None)


def probe_forward(model: nn.Module, example_input: Tensor, hooks: Mapping[nn.Module, Callable[..., Any]] = {},
                  pre_hooks: Mapping[nn.Module, Callable[..., Any]] = {}) -> None:
    """One eval-mode, no-grad forward pass of ``model`` with temporary forward ``hooks`` and forward
    ``pre_hooks`` (module -> hook). The mode is restored and the hooks removed afterwards, so the pass
    changes no BatchNorm statistics and no quantizer range."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    handles += [module.register_forward_pre_hook(hook) for module, hook in pre_hooks.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def forward_order(model: nn.Module, example_input: Tensor,
                  kinds: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)) -> list[str]:
    """Qualified names of the modules of ``kinds`` (by default the conv / linear layers; ``()``:
    every leaf module) in the order a forward pass runs them.

    Registration order is not execution order in every model (a ResNet's projection shortcut is
    registered after the block's convs), so the order is recorded with hooks on one eval-mode pass.
    """
    names = {module: name for name, module in model.named_modules()
             if (isinstance(module, kinds) if kinds else next(module.children(), None) is None)}
    order: list[str] = []

    def record(module: nn.Module, _inputs: object, _output: object) -> None:
        if names[module] not in order:
            order.append(names[module])

    probe_forward(model, example_input, {module: record for module in names})
    return order


def policy_bits(policy: str | int, bits: int) -> int:
    """Bits of a first/last layer under ``policy`` (``fp`` | ``8`` | ``same``), given the run's ``bits``."""
    policy = str(policy)
    if policy not in LAYER_POLICIES:
        raise QnnrunError(f"layer policy '{policy}' is not valid: valid are {', '.join(LAYER_POLICIES)}")
    if policy == "fp" or bits == FLOAT_BITS:
        return FLOAT_BITS
    return 8 if policy == "8" else bits


def layer_bits(
    index: int, count: int, weight_bits: int, input_bits: int, first_layer: str | int, last_layer: str | int,
    image_input_bits: int = 8, rule: LayerBits | None = None,
) -> LayerBits:
    """Bits of layer ``index`` of ``count`` (forward order): a ``quant.layer_bits`` ``rule``'s when one
    matches the layer, else the run's bits under the first/last layer policy.

    The image input of the first layer is never quantized below ``image_input_bits`` (8, or 32 to
    keep it float as BNN, AQE and SQ do), whichever decided its bits.
    """
    weight, inputs = weight_bits, input_bits
    if rule is not None:
        weight, inputs = rule.weight, rule.input
    elif index == 0:
        weight, inputs = policy_bits(first_layer, weight_bits), policy_bits(first_layer, input_bits)
    elif index == count - 1:
        weight, inputs = policy_bits(last_layer, weight_bits), policy_bits(last_layer, input_bits)
    if index == 0 and inputs != FLOAT_BITS:
        inputs = FLOAT_BITS if image_input_bits == FLOAT_BITS else max(inputs, image_input_bits)
    return LayerBits(weight, inputs)


QuantizerFactory = Callable[[nn.Module, int], "Quantizer | None"]

# Where a method moves a layer after conversion (the binary nets wrap the last one with their output
# BatchNorm: ``classifier`` becomes ``classifier.0``), the layer keeps under this attribute the name
# quant.layer_bits rules match, which the BOPs table, summary.json, HParams and the ONNX export show
# (the integer export's records keep the module path, by which they are loaded).
LAYER_NAME_ATTR = "qnnrun_layer_name"


def layer_name(module: nn.Module, path: str) -> str:
    """The name rules know conv/linear ``module`` by: the one it kept when a method moved it, else its
    ``path`` in the model."""
    return getattr(module, LAYER_NAME_ATTR, path)


def convert(
    model: nn.Module,
    example_input: Tensor,
    bits_of: Callable[[str, int, int], LayerBits],
    make_weight_quant: QuantizerFactory,
    make_input_quant: QuantizerFactory,
) -> nn.Module:
    """Replace every conv/linear layer of ``model`` in place by its quantized version.

    Args:
        model: float model.
        example_input: one input batch [B, C, H, W] used to find the forward order.
        bits_of: ``(name, index, count) -> LayerBits`` for layer ``name`` at ``index`` in forward order.
        make_weight_quant, make_input_quant: ``(float_layer, bits) -> Quantizer``; called only for
            bits below 32 (a 32-bit side stays float).

    Returns:
        ``model``, with layers that end up entirely float (32/32) left as plain ``nn`` layers.

    A ``nn.Dropout`` that runs right before a layer with a quantized input moves
    into that layer and drops the *quantized* input, as BinaryNet and QNN place it (sign, then
    dropout, then the product). Left in front, it would hand the quantizer its zeros and its
    ``1 / (1 - p)``-scaled values: a sign turns the kept units back into +-1, losing the rescaling
    (and a dropped 0 into +1), and a k-bit grid on [-1, 1] clips the scaled half of the range. An
    ``nn.Identity`` takes its place, so module names and state_dict keys stay those of the float model.
    """
    leaves = forward_order(model, example_input, kinds=())  # conv / linear layers are leaves too: one pass
    order = [name for name in leaves if isinstance(model.get_submodule(name), (nn.Conv2d, nn.Linear))]
    for index, name in enumerate(order):
        layer = model.get_submodule(name)
        chosen = bits_of(name, index, len(order))
        if chosen.weight == FLOAT_BITS and chosen.input == FLOAT_BITS:
            continue
        weight_quant = make_weight_quant(layer, chosen.weight) if chosen.weight != FLOAT_BITS else None
        input_quant = make_input_quant(layer, chosen.input) if chosen.input != FLOAT_BITS else None
        if input_quant is not None and index == 0:
            input_quant.image_input = True
        quant_cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        model.set_submodule(name, quant_cls.from_float(layer, weight_quant, input_quant))
    _drop_quantized_inputs(model, leaves)
    return model


def _drop_quantized_inputs(model: nn.Module, leaves: list[str]) -> None:
    """Move each ``nn.Dropout`` that runs right before a quantized-input layer (``leaves``: leaf
    module names in execution order) into that layer, leaving an ``nn.Identity`` in its place."""
    for before, after in itertools.pairwise(leaves):
        dropout, layer = model.get_submodule(before), model.get_submodule(after)
        if isinstance(dropout, nn.Dropout) and isinstance(layer, QuantLayer) and layer.input_quant is not None:
            layer.input_dropout = dropout
            model.set_submodule(before, nn.Identity())
