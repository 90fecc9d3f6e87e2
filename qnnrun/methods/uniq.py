"""``method=uniq``: uniform noise injection for non-uniform quantization (Baskin et al., ACM TOCS 2021).

Weights use the k-quantile quantizer (``k = 2^bits``) of a normal distribution fitted to each
weight tensor: every weight becomes the median of its equiprobable bin. In training, a layer in
the ``NOISY`` state instead gets uniform noise in the CDF domain, ``Phi^-1(Phi(z) + e)`` with
``e ~ U[-1/(2k), 1/(2k)]``. The gradient reaches the float weights unchanged, as in UNIQ's code,
which swaps the noisy copy into the weight's data for the forward pass only
(``method.noise_grad=identity``); ``through`` differentiates the noise formula instead.

Training is gradual: the quantized layers, in forward order, are split into ``method.stages``
contiguous blocks; during stage ``i`` (``method.stage_epochs`` epochs each, default an equal
split) blocks before ``i`` are quantized and ``FROZEN`` (weights fixed, and their biases too
with ``method.freeze_bias``, as UNIQ's ``switch_stage`` stops every parameter of a frozen layer;
BatchNorm keeps training), block ``i`` is ``NOISY``, later blocks are ``FLOAT`` with their input
quantizers disabled. Biases stay float: UNIQ's code also noises and quantizes them (each with its
own normal fit), which this framework does not (docs/sq_uniq.md). A ``NOISY`` layer evaluates
with its real k-quantile weights, so at the end of the last stage the whole network evaluates
quantized; evaluations in earlier stages measure the partly float network. Activations (inputs
of the quantized layers) are uniform at ``bits.a`` bits, as ``method=ste``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.config import check_bool, check_choice, check_int
from qnnrun.errors import QnnrunError, plural
from qnnrun.methods.base import Method
from qnnrun.methods.sq import stage_lengths, stage_of
from qnnrun.quant import functional as Q
from qnnrun.quant.convert import forward_order
from qnnrun.quant.layers import ChannelState, QuantLayer
from qnnrun.quant.quantizers import KQuantileQuantizer, Quantizer, UniformQuantizer


def split_blocks(count: int, blocks: int) -> list[range]:
    """``range(count)`` cut into ``blocks`` contiguous, near-equal parts (the longer ones first)."""
    return [range(int(part[0]), int(part[-1]) + 1) for part in np.array_split(np.arange(count), blocks)]


class Uniq(Method):
    name = "uniq"
    quant_options = frozenset({"narrow_range", "estimator", "ema_momentum"})  # of the activation quantizers
    static_parameters = False  # frozen blocks stop receiving gradients
    epoch_schedule = "its stages"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.stages = check_int("method.stages", cfg.method.stages, 1)
        self.stage_epochs_option = cfg.method.stage_epochs
        self.noise_grad = check_choice("method.noise_grad", cfg.method.noise_grad,
                                       Q.NOISE_GRADIENTS)
        self.freeze_bias = check_bool("method.freeze_bias", cfg.method.freeze_bias)
        self.blocks: list[list[QuantLayer]] = []
        self.stage = 0

    def weight_quantizer(self, layer: nn.Module, bits: int) -> Quantizer:
        return KQuantileQuantizer(bits, self.noise_grad)

    def input_quantizer(self, layer: nn.Module, bits: int) -> Quantizer:
        quant = self.cfg.quant
        return UniformQuantizer(bits, signed=None, range_mode="ema", momentum=quant.ema_momentum,
                                narrow=quant.narrow_range, estimator=quant.estimator)

    def build(self, model: nn.Module, example_input: Tensor) -> nn.Module:
        """Quantize under the layer policy, then cut the quantized layers (forward order) into blocks."""
        order = forward_order(model, example_input)
        model = super().build(model, example_input)
        layers = [m for m in (model.get_submodule(name) for name in order) if isinstance(m, QuantLayer)]
        if layers and self.stages > len(layers):
            raise QnnrunError(f"method.stages={self.stages} is not valid: this model has "
                              f"{plural(len(layers), 'quantized layer')}, so at most {plural(len(layers), 'stage')}")
        self.blocks = [[layers[i] for i in part] for part in split_blocks(len(layers), self.stages)] if layers else []
        return model

    def plan(self, epochs: int, steps_per_epoch: int) -> None:
        super().plan(epochs, steps_per_epoch)
        self.stage_epochs = stage_lengths("method.stage_epochs", self.stage_epochs_option, self.stages, epochs)

    def prepare(self, model: nn.Module, batches: Iterable[Tensor]) -> None:
        """Calibrate every activation range on the float-weight network (before any stage disables one)."""
        for block in self.blocks:
            for layer in block:
                layer.set_channel_state(ChannelState.FLOAT)
                if layer.input_quant is not None:
                    layer.input_quant.enabled = True
        super().prepare(model, batches)

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        self.stage = stage_of(epoch, self.stage_epochs)
        for index, block in enumerate(self.blocks):
            for layer in block:
                frozen = index < self.stage
                if frozen:
                    if layer.weight_quant is not None and layer.present_states() != {ChannelState.FROZEN}:
                        layer.set_channel_state(ChannelState.FROZEN)
                else:
                    layer.set_channel_state(ChannelState.NOISY if index == self.stage else ChannelState.FLOAT)
                if self.freeze_bias and layer.bias is not None and layer.weight_quant is not None:
                    # No gradient: the optimizer skips it (no update, no momentum, no weight decay).
                    layer.bias.requires_grad_(not frozen)
                if layer.input_quant is not None:
                    layer.input_quant.enabled = index <= self.stage

    def scalars(self, model: nn.Module) -> dict[str, float]:
        """The base fractions plus the current stage (0-based)."""
        return {**super().scalars(model), "uniq_stage": float(self.stage)}
