"""``method=sq``: stochastic quantization (Dong et al., BMVC 2017).

Weights are quantized per output row (conv filter / linear neuron): BWN ``alpha_i * sign(W_i)``
with ``alpha_i = mean |W_i|`` at 1 bit, TWN at 2 bits (one threshold ``0.7 * mean |W - mean(W)|``
per layer as in the authors' code, ``method.twn_centered=false`` for ``0.7 * mean |W|``; ``alpha_i``
the mean of the row's entries above it), symmetric uniform per row at 3+ bits.

Before every training forward pass each layer keeps ``floor((1 - r) * rows)`` rows in full
precision, drawn without replacement with probability proportional to their relative
quantization error ``e_i = |W_i - Q_i|_1 / |W_i|_1``; the other rows use ``Q_i`` (channel states
``FLOAT`` / ``QUANT``; ``method.selection=error``, the default). The paper's abstract words it the
other way round, drawing the *quantized* rows with probability inversely proportional to
``e_i``: ``method.selection=inverse_error`` draws ``rows - floor((1 - r) * rows)`` quantized
rows with probability proportional to ``1 / (e_i + 1e-8)``; ``uniform`` ignores the errors (the
paper's "constant" ablation). Gradients reach every float row (STE). After the optimizer step
every row goes back to ``QUANT``, so evaluation and checkpoints always see the fully quantized network.
The SQ ratio ``r`` follows ``method.ratios`` (default ``0.5, 0.75, 0.875, 1.0``) in stages of
``method.stage_epochs`` epochs; ``ratios=[1.0]`` is plain BWN / TWN. Each stage is a training run of
its own started from the previous stage's weights, as in the paper: the learning-rate schedule
(``sched``) starts again at every stage (``method.stage_schedule=restart``, the default;
``shared`` runs one schedule over all stages). The optimizer's state carries over.

Activations are float unless ``bits.a < 32`` (then uniform, as ``method=ste``).

The ratio follows the epoch, and the row draws come from a generator seeded from ``(seed, epoch)``
at every epoch start; checkpoints keep the generator's position, so a run interrupted mid-epoch
resumes with the same draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.config import check_bool, check_choice, check_number
from qnnrun.errors import QnnrunError
from qnnrun.methods.base import Method
from qnnrun.quant import functional as Q
from qnnrun.quant.layers import ChannelState, QuantLayer, quant_layers
from qnnrun.quant.quantizers import Quantizer, TernaryQuantizer, UniformQuantizer


def split_epochs(epochs: int, stages: int) -> list[int]:
    """``epochs`` split into ``stages`` near-equal contiguous lengths, the longer ones first."""
    base, extra = divmod(epochs, stages)
    return [base + (1 if index < extra else 0) for index in range(stages)]


def stage_lengths(key: str, lengths: Sequence[int] | None, stages: int, epochs: int) -> list[int]:
    """Validated per-stage epoch counts: ``lengths`` as given (summing to ``epochs``), or an equal split."""
    if lengths is None:
        return split_epochs(epochs, stages)
    lengths = list(lengths)
    if len(lengths) != stages or any(not isinstance(n, int) or n < 0 for n in lengths) or sum(lengths) != epochs:
        raise QnnrunError(f"{key}={lengths} is not valid: expected {stages} non-negative integers summing to "
                          f"trainer.epochs={epochs} (or null for an equal split)")
    return lengths


def stage_of(epoch: int, lengths: Sequence[int]) -> int:
    """Index of the stage that 0-based ``epoch`` falls in (the last stage past the end)."""
    ends = np.cumsum(lengths)
    return min(int(np.searchsorted(ends, epoch, side="right")), len(lengths) - 1)


def float_row_count(rows: int, ratio: float) -> int:
    """``floor((1 - ratio) * rows)``, robust to the binary rounding of ``1 - ratio``."""
    return math.floor(round((1.0 - ratio) * rows, 9))


SELECTIONS = ("error", "inverse_error", "uniform")
STAGE_SCHEDULES = ("restart", "shared")


def sample_rows(weights: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Indices of ``count`` rows drawn without replacement with probability proportional to ``weights`` [C].

    Rows of weight zero are drawn only once every row of positive weight is taken (they get 1e-12
    of the largest weight); when every weight is zero the draw is uniform.
    """
    weights = weights.double()
    floor = (weights.max() * 1e-12).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.multinomial(weights.clamp_min(floor), count, replacement=False, generator=generator)


class StochasticQuantization(Method):
    name = "sq"
    quant_options = frozenset({"narrow_range", "estimator", "ema_momentum"})
    epoch_schedule = "its stages' ratios"

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        options = cfg.method
        self.ratios = [float(r) for r in options.ratios]
        if not self.ratios or any(not 0.0 < r <= 1.0 for r in self.ratios):
            raise QnnrunError(f"method.ratios={list(options.ratios)} is not valid: expected a non-empty list of "
                              f"numbers in (0, 1], e.g. [0.5, 0.75, 0.875, 1.0]")
        self.threshold_ratio = check_number("method.twn_threshold", options.twn_threshold, 0, 1, high_closed=False)
        self.twn_centered = check_bool("method.twn_centered", options.twn_centered)
        self.selection = check_choice("method.selection", options.selection, SELECTIONS)
        self.stage_epochs_option = options.stage_epochs
        self.stage_schedule = check_choice("method.stage_schedule", options.stage_schedule,
                                           STAGE_SCHEDULES)
        self.seed = int(cfg.seed)
        self.ratio = self.ratios[0]
        self.generator: torch.Generator | None = None
        self._mixed: list[QuantLayer] = []  # layers whose rows before_step split into FLOAT and QUANT

    def weight_quantizer(self, layer: nn.Module, bits: int) -> Quantizer:
        estimator = self.cfg.quant.estimator
        if bits == 2:
            return TernaryQuantizer(self.threshold_ratio, estimator, self.twn_centered)
        # 1 bit: sign times the row's mean |w| (BWN); 3+ bits: symmetric uniform, max |w| per row.
        return UniformQuantizer(bits, signed=True, channels=layer.weight.shape[0], range_mode="dynamic",
                                narrow=self.cfg.quant.narrow_range, estimator=estimator)

    def input_quantizer(self, layer: nn.Module, bits: int) -> Quantizer:
        quant = self.cfg.quant
        return UniformQuantizer(bits, signed=None, range_mode="ema", momentum=quant.ema_momentum,
                                narrow=quant.narrow_range, estimator=quant.estimator)

    def plan(self, epochs: int, steps_per_epoch: int) -> None:
        super().plan(epochs, steps_per_epoch)
        self.stage_epochs = stage_lengths("method.stage_epochs", self.stage_epochs_option, len(self.ratios), epochs)

    def schedule_span(self, step: int) -> tuple[int, int]:
        """``restart``: each stage is a training run of its own, from the previous stage's weights
        (the paper), so the ``sched`` schedule starts again over the stage's epochs; ``shared``: one
        schedule over the whole budget."""
        if self.stage_schedule == "shared":
            return super().schedule_span(step)
        per_epoch = max(1, self.steps_per_epoch)
        stage = stage_of(step // per_epoch, self.stage_epochs)
        start = sum(self.stage_epochs[:stage]) * per_epoch
        return step - start, self.stage_epochs[stage]

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        self.ratio = self.ratios[stage_of(epoch, self.stage_epochs)]
        device = next(model.parameters()).device
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device)
        # Seeding from (seed, epoch) makes each epoch's draws the same whether or not the run was
        # resumed before it (checkpoints are written at epoch ends), on any device.
        self.generator.manual_seed(int(np.random.SeedSequence([self.seed, epoch, 0x5351]).generate_state(1)[0]))

    def before_step(self, model: nn.Module, step: int) -> None:
        for _, layer in quant_layers(model):
            if layer.weight_quant is None:
                continue
            rows = layer.weight.shape[0]
            count = float_row_count(rows, self.ratio)
            if count == 0:
                continue
            if self.selection == "uniform":
                errors = torch.ones(rows, device=layer.weight.device)
            else:
                with torch.no_grad():
                    errors = Q.row_relative_error(layer.weight, layer.weight_quant(layer.weight))
            # 0 < count < rows: both states are present afterwards (known here, no device sync).
            both = (ChannelState.FLOAT, ChannelState.QUANT)
            if self.selection == "inverse_error":  # the quantized rows are the ones drawn
                layer.set_channel_state(ChannelState.FLOAT)
                layer.set_channel_state(ChannelState.QUANT, sample_rows(1.0 / (errors.double() + 1e-8),
                                                                        rows - count, self.generator), present=both)
            else:
                layer.set_channel_state(ChannelState.QUANT)
                layer.set_channel_state(ChannelState.FLOAT, sample_rows(errors, count, self.generator), present=both)
            self._mixed.append(layer)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        for layer in self._mixed:
            layer.set_channel_state(ChannelState.QUANT)
        self._mixed.clear()

    def scalars(self, model: nn.Module) -> dict[str, float]:
        """The SQ ratio and the row-weighted mean relative quantization error ``e_i`` of all layers."""
        out = {"sq_ratio": self.ratio}
        errors = []
        with torch.no_grad():
            for _, layer in quant_layers(model):
                if layer.weight_quant is not None:
                    errors.append(Q.row_relative_error(layer.weight, layer.weight_quant(layer.weight)))
        if errors:
            out["quant_error"] = float(torch.cat(errors).mean())
        return out

    def state_dict(self) -> dict[str, Any]:
        """The row generator's position (uint8 tensor), when a draw has been made."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the generator's position (the engine calls this after ``on_epoch_start`` when it
        resumes mid-epoch; at an epoch start, ``on_epoch_start`` reseeds it anyway)."""
        if "generator" in state and self.generator is not None:
            self.generator.set_state(state["generator"])
