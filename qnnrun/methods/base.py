"""The interface every quantization method implements.

A method is *a quantizer + a gradient estimator + a schedule over which parts of the network are
quantized*. It builds the quantized model (choosing the quantizers of each layer), and then only
acts through hooks; it never reaches into the training loop. The engine calls, in this order::

    model = method.build(float_model, example_input)
    method.plan(epochs, steps_per_epoch)
    method.set_calibration_source(source)           (fresh run and resume)
    method.prepare(model, calibration_batches)      (not on resume: the state is in the checkpoint)
    for epoch:  method.on_epoch_start(model, epoch, epochs)
        for step:  method.before_step(model, step); forward; method.criterion(...) + method.regularization(model)
                   backward; optimizer.step(); method.after_optimizer_step(model, step)
        method.scalars(model) -> TensorBoard
    method.state_dict() / load_state_dict()  -> checkpoints
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from qnnrun.config import layer_rules
from qnnrun.errors import QnnrunError
from qnnrun.quant.convert import FLOAT_BITS, LayerBits, convert, forward_order, layer_bits, matching_rule
from qnnrun.quant.layers import quant_layers
from qnnrun.quant.quantizers import Quantizer


# The ``quant.*`` options every method reads: the layer widths (the build's policy and rules), the
# calibration batches and the BatchNorm re-estimation (the engine's).
COMMON_QUANT_OPTIONS = frozenset({"first_layer", "last_layer", "image_input_bits", "layer_bits", "calib_batches",
                                  "bn_reestimate_batches"})


class Method:
    """Base class of every ``method=...``; subclasses choose quantizers and override hooks.

    Args:
        cfg: the whole run config; a method reads ``cfg.method`` (its own options), ``cfg.bits``
            (``w`` and ``a``) and ``cfg.quant`` (layer policy and quantizer options).
    """

    name: ClassVar[str]
    # False when some parameters stop (or start) receiving gradients during a run: BatchNorm
    # folding, frozen blocks. Multi-process training then lets DDP look for unused parameters.
    static_parameters: ClassVar[bool] = True
    # True: calibration sees BatchNorm normalising with each batch's statistics, as training does,
    # instead of the float net's running ones (which no longer fit once the weights change scale,
    # as DoReFa's do). The running statistics are left as they are.
    calibrate_with_batch_statistics: ClassVar[bool] = False

    # The bit widths (below 32) the method's quantizers run at; None: any of 1-8.
    layer_widths: ClassVar[tuple[int, ...] | None] = None
    # The width of the weights and inputs whatever ``bits`` says (fp: 32, bnn: 1); None: ``bits``'s.
    fixed_bits: ClassVar[int | None] = None
    # What of the method's own schedule is laid over the run's epochs (UNIQ's stages, NBN's
    # progression, SQ's ratios, AQE's rising alpha); None when nothing is. extend=true would lay it out
    # again over the new length, so a run of such a method is not extended.
    epoch_schedule: str | None = None
    # The ``quant.*`` options the method's quantizers read besides :data:`COMMON_QUANT_OPTIONS`; one of
    # the others set away from the method's default is named in a warning (``methods.ignored_quant_options``).
    quant_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.weight_bits = int(cfg.bits.w) if self.fixed_bits is None else self.fixed_bits
        self.act_bits = int(cfg.bits.a) if self.fixed_bits is None else self.fixed_bits
        self.layer_rules = layer_rules(cfg)  # quant.layer_bits, in order
        # The widths of the layers no rule matched, as build set them (the layer policy), and of each rule's
        # layers (its widths, but the image input kept at >= 8 bits or float); None before build.
        self.rest_bits: set[LayerBits] | None = None
        self.rule_bits: dict[str, set[LayerBits]] | None = None
        if self.layer_widths is not None:
            for rule in self.layer_rules:
                bad = [b for b in (rule.bits.weight, rule.bits.input) if b not in (*self.layer_widths, FLOAT_BITS)]
                if bad:
                    valid = ", ".join(str(b) for b in (*self.layer_widths, FLOAT_BITS))
                    raise QnnrunError(f"quant.layer_bits[{rule.pattern!r}] asks method={self.name} for {bad[0]} bits: "
                                      f"its layers run at {valid} (float)")

    @property
    def quantizes(self) -> bool:
        """Whether this method at these bits quantizes anything."""
        return (self.weight_bits != FLOAT_BITS or self.act_bits != FLOAT_BITS
                or any(bits != FLOAT_BITS for rule in self.layer_rules for bits in (rule.bits.weight, rule.bits.input)))

    @property
    def mixed(self) -> bool:
        """Whether ``quant.layer_bits`` sets some layers' widths: the run is labelled mixed, not ``W<w>A<a>``."""
        return bool(self.layer_rules)

    @property
    def bits_label(self) -> str:
        """The widths for logs: ``W2/A2``, or for a mixed run each rule's and the rest's, e.g.
        ``mixed (conv1 W8/A8, layer3.* W4/A4, others W2/A2)``; once built, as the layers run: each
        rule's (``conv1 W4/A8`` for a rule ``{w: 4}`` on the first layer, whose image input stays at
        8 bits), the rest's (``others W2/A2 or float``), and no rest where the rules cover every layer."""
        plain = f"W{self.weight_bits}/A{self.act_bits}"
        if not self.mixed:
            return plain
        if self.rest_bits is None or self.rule_bits is None:
            rules = ", ".join(f"{r.pattern} {_widths({r.bits})}" for r in self.layer_rules)
            return f"mixed ({rules}, others {plain})"
        rules = ", ".join(f"{r.pattern} {_widths(self.rule_bits.get(r.pattern, {r.bits}))}" for r in self.layer_rules)
        return f"mixed ({rules}" + (f", others {_widths(self.rest_bits)}" if self.rest_bits else "") + ")"

    # ---- building -------------------------------------------------------------------------
    def weight_quantizer(self, layer: nn.Module, bits: int) -> Quantizer:
        """Quantizer for the weight of ``layer`` at ``bits`` (< 32) bits."""
        raise NotImplementedError

    def input_quantizer(self, layer: nn.Module, bits: int) -> Quantizer:
        """Quantizer for the input activations of ``layer`` at ``bits`` (< 32) bits."""
        raise NotImplementedError

    def build(self, model: nn.Module, example_input: Tensor) -> nn.Module:
        """Swap the float layers of ``model`` for quantized ones: each layer at its ``quant.layer_bits``
        rule's bits when one matches its name, else at ``bits`` under ``cfg.quant``'s layer policy.
        A rule that matches no layer is an error listing the layers' names."""
        if not self.quantizes:
            return model
        quant, rest = self.cfg.quant, set()
        matched: dict[str, set[LayerBits]] = defaultdict(set)

        def bits_of(name: str, index: int, count: int) -> LayerBits:
            rule = matching_rule(name, self.layer_rules)
            bits = layer_bits(index, count, self.weight_bits, self.act_bits, quant.first_layer, quant.last_layer,
                              int(quant.image_input_bits), rule.bits if rule is not None else None)
            (rest if rule is None else matched[rule.pattern]).add(bits)
            return bits

        names = forward_order(model, example_input) if self.layer_rules else []
        model = convert(model, example_input, bits_of, self.weight_quantizer, self.input_quantizer)
        self.rest_bits, self.rule_bits = rest, dict(matched)
        unmatched = [rule.pattern for rule in self.layer_rules if rule.pattern not in matched]
        if unmatched:
            pattern = unmatched[0]
            if not matches_no_layer(pattern, names):
                raise QnnrunError(f"quant.layer_bits: every layer {pattern!r} matches is matched by an earlier "
                                  f"pattern (the first match wins): put it before them")
            raise no_layer_matches(pattern, self.cfg.model.name, names)
        return model

    # ---- hooks ----------------------------------------------------------------------------
    def plan(self, epochs: int, steps_per_epoch: int) -> None:
        """The run's budget, told before :meth:`prepare`: schedules fit into it."""
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch

    def set_calibration_source(self, source: Callable[[], Iterable[Tensor]]) -> None:
        """Told after :meth:`plan` in every run, fresh or resumed: ``source()`` returns a new iterator
        over ``quant.calib_batches`` input batches [B, C, H, W], for methods that calibrate again
        later in the run (a progressive schedule calibrating each layer when it is quantized)."""
        self.calibration_source = source

    def prepare(self, model: nn.Module, batches: Iterable[Tensor]) -> None:
        """Calibrate the quantizers' ranges on a few input batches [B, C, H, W] (eval mode, no grad)."""
        quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
        if quantizers:
            self.calibrate_quantizers(model, quantizers, batches)

    def calibrate_quantizers(self, model: nn.Module, quantizers: Sequence[Quantizer],
                             batches: Iterable[Tensor]) -> None:
        """Reset ``quantizers`` and calibrate them on input batches [B, C, H, W] run through ``model``
        as it is now: eval mode, no grad, BatchNorm on batch statistics when
        :attr:`calibrate_with_batch_statistics`. The model's training mode is restored afterwards."""
        was_training = model.training
        model.eval()
        for quantizer in quantizers:
            quantizer.reset()
            quantizer.calibrating = True
        try:
            with torch.no_grad(), batch_statistics(model) if self.calibrate_with_batch_statistics else nullcontext():
                for images in batches:
                    model(images)
        finally:
            for quantizer in quantizers:
                quantizer.calibrating = False
            model.train(was_training)

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Called before each training epoch (0-based ``epoch`` of ``epochs``)."""

    def schedule_span(self, step: int) -> tuple[int, int]:
        """Where global ``step`` falls in the ``sched`` learning-rate schedule: (step counted from the
        start of its training run, that run's epochs). One run over the whole budget by default; a
        method whose stages are training runs of their own restarts the schedule at each stage."""
        return step, self.epochs

    def lr_scale(self, step: int) -> float:
        """Multiplier of the learning rate at global ``step``, on top of the ``sched`` factor: a
        method's own phases (e.g. fine-tuning a BatchNorm-folded network at a lower rate). 1 by default."""
        return 1.0

    def before_step(self, model: nn.Module, step: int) -> None:
        """Called before each training forward pass (global 0-based ``step``)."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step (weight clipping, freezing, ...)."""

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: ``weight_decay`` on conv/linear weights only (not on BatchNorm,
        biases or quantizer parameters such as learned steps)."""
        decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        params = [p for p in model.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if id(p) in decay_ids], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in decay_ids], "weight_decay": 0.0},
        ]

    def criterion(self, label_smoothing: float) -> nn.Module:
        """The training loss over (logits [B, classes], labels [B]): cross-entropy by default."""
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def regularization(self, model: nn.Module) -> Tensor | None:
        """Extra loss term added to the task loss, or ``None``."""
        return None

    def scalars(self, model: nn.Module) -> dict[str, float]:
        """Scalars to log to TensorBoard each epoch under ``quant/``: by default the fraction of
        quantized output channels, in total and per layer."""
        layers = quant_layers(model)
        if not layers:
            return {}
        channels = [(name, layer.weight.shape[0], layer.quantized_fraction()) for name, layer in layers]
        total = sum(count for _, count, _ in channels)
        out = {"quantized_fraction": sum(count * frac for _, count, frac in channels) / total}
        out.update({f"quantized_fraction/{name}": frac for name, _, frac in channels})
        return out

    def state_dict(self) -> dict[str, Any]:
        """Method state that is not in the model's buffers (schedule position, random state)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def restore_model(self, model: nn.Module) -> None:
        """Redo on a freshly built ``model``, after its state dict and this method's were loaded, the
        changes of structure that the method's state implies (none by default)."""


def matches_no_layer(pattern: str, names: Sequence[str]) -> bool:
    """Whether the ``quant.layer_bits`` glob ``pattern`` matches none of the layer ``names``."""
    return not any(fnmatch.fnmatchcase(name, pattern) for name in names)


def no_layer_matches(pattern: str, model: str, names: Sequence[str]) -> QnnrunError:
    """The error for a ``quant.layer_bits`` pattern that matches none of the model's layers ``names``."""
    return QnnrunError(f"quant.layer_bits: {pattern!r} matches no layer of model={model}: its layers are "
                       f"{', '.join(names)}")


def _widths(widths: Iterable[LayerBits]) -> str:
    """``W4/A8 or W4/A4`` (``float`` for 32/32), in a stable order."""
    return " or ".join(sorted({"float" if b == LayerBits(FLOAT_BITS, FLOAT_BITS) else f"W{b.weight}/A{b.input}"
                               for b in widths}))


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block every BatchNorm of ``model`` normalises with the statistics of the batch it
    sees, as in training, and leaves its running statistics (and batch count) untouched; the other
    modules keep their mode. The BatchNorms' modes are restored on exit."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(bn.training, bn.track_running_stats) for bn in norms]
    for bn in norms:
        bn.training, bn.track_running_stats = True, False
    try:
        yield
    finally:
        for bn, (training, tracking) in zip(norms, saved):
            bn.training, bn.track_running_stats = training, tracking
