"""``method=lbl``, ``method=fbf``, ``method=nbn``: progressive quantization (Sher et al. 2023,
"Neuron-by-Neuron Quantization for Efficient Low-Bit QNN Training").

One schedule at three granularities. The quantizable layers (those with quantized weights, in
forward order) are cut into groups of output channels; one group after another is moved from
``FLOAT`` to ``QUANT`` (``after_quantize=ste``: the float shadow keeps training through the
straight-through estimator) or to ``FROZEN`` (``after_quantize=freeze``: the quantized rows are
captured and receive no further update), and the rest of the network is fine-tuned for
``steps_per_group`` steps before the next group:

* ``lbl`` (layer-by-layer): a group is a whole layer, frozen;
* ``fbf`` (filter-by-filter): groups of ``group_size`` filters inside each layer, frozen;
* ``nbn`` (neuron-by-neuron): groups of ``group_size`` output neurons of every conv and linear
  layer, kept training through STE, then ``final_epochs`` of whole-network STE fine-tuning.

The three differ only in their configs (``conf/method/{lbl,fbf,nbn}.yaml``). A run's epoch
budget ``trainer.epochs`` is split into a float phase (``float_epochs``; every channel ``FLOAT``,
every input quantizer disabled; skipped by default when ``init_from`` gives a float checkpoint),
the progression and a final fine-tune; from the start of the progression on, the learning rate
is multiplied by ``quant_lr_scale`` (default 0.1: the network, once BatchNorm is folded into
the layers before it (``quant.fold_bn``), no longer renormalises its activations and diverges at
float-training rates). When a layer's first group is quantized, its weight
quantizer's parameters are fitted by MMSE on the layer's current (folded) weight and then kept
fixed, so that every group of the layer lies on one per-tensor grid; its input quantizer is
calibrated on ``quant.calib_batches`` training batches passed through the partly quantized network
and enabled (``act_schedule=layer``; ``start`` calibrates and enables all of them when the
progression starts; a layer whose weights a ``quant.layer_bits`` rule keeps float has no group, and
its input is calibrated and enabled when the progression starts under either schedule). With
``order=error`` each group is the remaining float channels with the smallest quantization error
(mean squared error of the row), so the largest come last.
Biases (including folded BatchNorm shifts) stay float and keep training, as they would in
32-bit accumulators at inference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.config import check_choice, check_int, check_number
from qnnrun.errors import QnnrunError, plural
from qnnrun.methods.base import Method
from qnnrun.methods.ste import DirectSTE
from qnnrun.quant.convert import FLOAT_BITS, forward_order
from qnnrun.quant.fold import batchnorm_pairs, fold_batchnorm, mark_folded
from qnnrun.quant.layers import ChannelState, QuantLayer, quant_layers
from qnnrun.quant.quantizers import AffineQuantizer, Quantizer

AFTER_QUANTIZE = ("ste", "freeze")
ORDERS = ("error", "index")
ACT_SCHEDULES = ("layer", "start")
DEFAULT_GROUPS_PER_LAYER = 8


@dataclass(frozen=True)
class Group:
    """One step of the schedule: ``size`` output channels of layer ``layer`` (qualified name)."""

    layer: str
    size: int
    first: bool  # the layer's first group: its quantizers are fitted and calibrated now


def _optional_int(options: DictConfig, key: str, minimum: int) -> int | None:
    return check_int(f"method.{key}", options[key], minimum, optional=True)


def _choice(options: DictConfig, key: str, choices: tuple[str, ...]) -> str:
    return check_choice(f"method.{key}", str(options[key]), choices)


def schedule_groups(layers: list[tuple[str, int]], group_size: int | str | None) -> list[Group]:
    """Groups of each layer's output channels, layers in the given (forward) order.

    Args:
        layers: ``(name, output channels)`` of the quantizable layers.
        group_size: channels per group; ``"layer"`` for whole layers; ``None`` for
            ``ceil(channels / 8)``. The last group of a layer takes what is left.
    """
    groups = []
    for name, channels in layers:
        if group_size == "layer":
            size = channels
        elif group_size is None:
            size = math.ceil(channels / DEFAULT_GROUPS_PER_LAYER)
        else:
            size = int(group_size)
        for start in range(0, channels, size):
            groups.append(Group(name, min(size, channels - start), start == 0))
    return groups


class ProgressiveQuantization(DirectSTE):
    """The shared progressive schedule; ``cfg.method`` holds its options (see the module docstring
    and ``conf/method/nbn.yaml``). Quantizers are :class:`DirectSTE`'s (``quant.init``)."""

    static_parameters = False  # folded BatchNorms / frozen rows stop receiving gradients
    epoch_schedule = "its progression"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        options = cfg.method
        group_size = options.group_size
        if group_size != "layer":
            group_size = _optional_int(options, "group_size", 1)
        self.group_size: int | str | None = group_size
        self.steps_per_group_option = _optional_int(options, "steps_per_group", 1)
        self.float_epochs_option = _optional_int(options, "float_epochs", 0)
        self.final_epochs_option = _optional_int(options, "final_epochs", 0)
        self.after_quantize = _choice(options, "after_quantize", AFTER_QUANTIZE)
        self.order = _choice(options, "order", ORDERS)
        self.act_schedule = _choice(options, "act_schedule", ACT_SCHEDULES)
        self.quant_lr_scale = check_number("method.quant_lr_scale", options.quant_lr_scale, 0, 1)
        if self.weight_bits == FLOAT_BITS and self.act_bits != FLOAT_BITS:
            raise QnnrunError(f"method={self.name} with bits.w=32 has no weights to quantize progressively: "
                              f"set bits.w below 32 or use method=ste")
        self.layers: list[tuple[str, int]] = []  # (name, output channels) of the quantizable layers
        # Layers whose weights a quant.layer_bits rule keeps float but whose inputs it quantizes: no
        # group of theirs is ever due, so their inputs are quantized when the progression starts.
        self.float_weight_inputs: list[str] = []
        self.pairs: list[tuple[str, str]] = []  # (layer, BatchNorm) to fold
        self.groups: list[Group] = []
        self.done = 0  # groups quantized so far
        self.folded = False
        # Until plan() places it, the progression starts at step 0 only when there is no float phase.
        no_float_phase = self.float_epochs_option == 0 or (self.float_epochs_option is None and cfg.get("init_from"))
        self.start_step: float = 0 if no_float_phase else math.inf
        self.steps_per_group = 1

    # ---- building -------------------------------------------------------------------------
    def build(self, model: nn.Module, example_input: Tensor) -> nn.Module:
        if not self.quantizes:
            return model
        if self.cfg.quant.fold_bn:
            self.pairs = batchnorm_pairs(model, example_input)
        order = forward_order(model, example_input)
        # Method.build, not DirectSTE.build: BatchNorm is folded when the progression starts.
        model = Method.build(self, model, example_input)
        for _, layer in quant_layers(model):
            layer.set_channel_state(ChannelState.FLOAT)
            if layer.input_quant is not None:
                layer.input_quant.enabled = False
        self.layers = []
        self.float_weight_inputs = []
        for name in order:
            layer = model.get_submodule(name)
            if isinstance(layer, QuantLayer) and layer.weight_quant is not None:
                self.layers.append((name, layer.weight.shape[0]))
            elif isinstance(layer, QuantLayer) and layer.input_quant is not None:
                self.float_weight_inputs.append(name)
        return model

    # ---- schedule -------------------------------------------------------------------------
    def plan(self, epochs: int, steps_per_epoch: int) -> None:
        """Fit the float phase, the progression and the final fine-tune into ``epochs``. Refused where
        ``quant.layer_bits`` keeps every weight float: there is nothing to quantize progressively (a
        model built without training, as ``qnnrun sensitivity`` measures one layer's inputs, is fine)."""
        if self.float_weight_inputs and not self.layers:
            raise QnnrunError(f"method={self.name}: quant.layer_bits leaves every layer's weights float "
                              f"(only the inputs of {', '.join(self.float_weight_inputs)} are quantized), so there are "
                              f"no weights to quantize progressively: give some layer w below 32 or use method=ste")
        super().plan(epochs, steps_per_epoch)
        self.groups = schedule_groups(self.layers, self.group_size)
        if not self.groups or epochs == 0:
            self.start_step = math.inf
            return
        float_epochs = self.float_epochs_option
        if float_epochs is None:
            float_epochs = 0 if self.cfg.get("init_from") else epochs // 2
        final_epochs = self.final_epochs_option
        if final_epochs is None:
            final_epochs = (epochs - float_epochs) // 5
        progression = (epochs - float_epochs - final_epochs) * steps_per_epoch
        if progression < len(self.groups):
            raise QnnrunError(
                f"trainer.epochs={epochs} leaves {plural(epochs - float_epochs - final_epochs, 'epoch')} "
                f"({progression} steps) after method.float_epochs={float_epochs} and method.final_epochs="
                f"{final_epochs}, fewer than the {plural(len(self.groups), 'group')} to quantize: raise "
                f"trainer.epochs, lower those two or raise method.group_size")
        self.start_step = float_epochs * steps_per_epoch
        self.steps_per_group = self.steps_per_group_option or progression // len(self.groups)
        if self.steps_per_group * len(self.groups) > progression:
            raise QnnrunError(
                f"method.steps_per_group={self.steps_per_group} needs {self.steps_per_group * len(self.groups)} steps "
                f"for {len(self.groups)} groups, more than the {progression} steps of the progression: "
                f"valid are 1..{progression // len(self.groups)} or null")

    def lr_scale(self, step: int) -> float:
        """``method.quant_lr_scale`` from the start of the progression on: the BatchNorm-folded
        network no longer renormalises its activations and diverges at float-training rates."""
        return 1.0 if step < self.start_step else self.quant_lr_scale

    def groups_due(self, step: int) -> int:
        """Number of groups quantized before the forward pass of global ``step``."""
        if not self.groups or step < self.start_step:
            return 0
        return min(len(self.groups), int(step - self.start_step) // self.steps_per_group + 1)

    def prepare(self, model: nn.Module, batches: Iterable[Tensor]) -> None:
        """Nothing to calibrate before training: each layer is calibrated when it is quantized."""

    def restore_model(self, model: nn.Module) -> None:
        """A saved run's folded BatchNorms are plain ones in a freshly built model: swap them."""
        if self.folded:
            mark_folded(model, [norm for _, norm in self.pairs])

    def before_step(self, model: nn.Module, step: int) -> None:
        due = self.groups_due(step)
        if self.done < due and self.done == 0:
            self._start_progression(model)
        while self.done < due:
            self._quantize(model, self.groups[self.done])
            self.done += 1

    def _start_progression(self, model: nn.Module) -> None:
        if self.pairs and not self.folded:
            fold_batchnorm(model, self.pairs)
            self.folded = True
        if self.act_schedule == "start":
            self._calibrate(model, [layer.input_quant for _, layer in quant_layers(model)
                                    if layer.input_quant is not None])
        elif self.float_weight_inputs:
            self._calibrate(model, [model.get_submodule(name).input_quant for name in self.float_weight_inputs])

    def _quantize(self, model: nn.Module, group: Group) -> None:
        layer: QuantLayer = model.get_submodule(group.layer)  # type: ignore[assignment]
        if group.first:
            if isinstance(layer.weight_quant, AffineQuantizer):
                layer.weight_quant.fit(layer.weight)
            if self.act_schedule == "layer" and layer.input_quant is not None:
                self._calibrate(model, [layer.input_quant])
        remaining = (layer.channel_state == ChannelState.FLOAT).nonzero().flatten()
        if self.order == "error":
            with torch.no_grad():
                weight = layer.weight[remaining]
                errors = (layer.weight_quant(layer.weight)[remaining] - weight).square().flatten(1).mean(1)
            remaining = remaining[torch.argsort(errors, stable=True)]
        state = ChannelState.QUANT if self.after_quantize == "ste" else ChannelState.FROZEN
        layer.set_channel_state(state, remaining[: group.size])

    def _calibrate(self, model: nn.Module, quantizers: list[Quantizer]) -> None:
        """Enable ``quantizers`` and calibrate them on the calibration batches through the model as it is now."""
        for quantizer in quantizers:
            quantizer.enabled = True
        self.calibrate_quantizers(model, quantizers, self.calibration_source())

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "folded": self.folded}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.done = int(state["done"])
        self.folded = bool(state["folded"])


class LayerByLayer(ProgressiveQuantization):
    name = "lbl"


class FilterByFilter(ProgressiveQuantization):
    name = "fbf"


class NeuronByNeuron(ProgressiveQuantization):
    name = "nbn"
