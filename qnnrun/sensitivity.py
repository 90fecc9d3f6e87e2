"""``qnnrun sensitivity``: how much each conv/linear layer of a saved run loses when it alone is quantized.

For one layer at a time and three modes (its weights, its input, both) the checkpoint's network is
built with that layer at ``bits`` and every other layer float (``bits`` 32 plus one
``quant.layer_bits`` rule), calibrated by the method's ``prepare`` on ``quant.calib_batches``
training batches, and evaluated on the test set: no training step. Each measurement gives the
test-accuracy drop from the unquantized checkpoint evaluated the same way and the relative squared
quantization error of the quantized tensor(s). With a GBOPs budget, a greedy rule turns the
drops into a ``quant.layer_bits`` proposal (:func:`propose_widths`).

Units: accuracies in percent, drops in points, BOPs per image (GBOPs = 1e9 BOPs), errors
``||Q(x) - x||^2 / ||x||^2`` (dimensionless).
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from qnnrun.build import build_quantized_model, example_input, select_device
from qnnrun.checkpoint import (check_output_file, checkpoint_file, load_checkpoint, new_folder,
                               replace_atomic, write_text_atomic)
from qnnrun.config import check_int, check_mmse_width, check_number, validate_quant
from qnnrun.data import DataBundle, DataInfo, build_data
from qnnrun.errors import QnnrunError
from qnnrun.evaluate import evaluate, reestimate_batchnorm, saved_run_paths
from qnnrun.methods import METHODS, Method, build_method
from qnnrun.methods.bnn import LatentWeightMethod
from qnnrun.metrics.bops import layer_costs
from qnnrun.quant.convert import FLOAT_BITS, QUANT_BITS, LayerBits, forward_order
from qnnrun.quant.fold import batchnorm_pairs, fold_batchnorm
from qnnrun.quant.layers import ChannelState, QuantLayer, quant_layers
from qnnrun.schema import saved_config

log = logging.getLogger("qnnrun")

MODES = ("weights", "inputs", "both")
PROPOSAL_HIGH_BITS = 8  # the proposal starts with every layer at this width
SIGNATURE = "qnnrun sensitivity"  # first words of the text file, PNG "Software" tag: marks this command's own files
TEXT_FILE, CSV_FILE, PNG_FILE = "sensitivity.txt", "sensitivity.csv", "sensitivity.png"
CSV_FIELDS = ("layer", "mode", "weight_bits", "input_bits", "test_acc", "baseline_acc", "drop", "weight_error",
              "input_error")
# Methods that cannot quantize one layer alone, and why.
UNSUITED_METHODS = {"fp": "it quantizes nothing",
                    "bnn": "it runs every layer at 1 bit whatever quant.layer_bits says (use method=qnn bits=1)"}
# Method options that only schedule training and cannot hold with one quantized layer, and their values here.
TRAINING_ONLY_OPTIONS = {"uniq": {"stages": 1}}  # UNIQ: at most one stage per quantized layer
# What a user may set: the rest (model, data set, training) is the checkpoint's.
OPTION_KEYS = ("checkpoint", "bits", "method", "budget_gbops", "batches", "output", "device")
OPTION_PREFIXES = ("bits.", "method.", "quant.", "paths.")
# The keys of the composed config (train's and this command's) that it takes, and the options of its
# groups it refuses: what its --help shows of the config and the groups.
CONFIG_KEYS = (*OPTION_KEYS, "quant", "paths")
REFUSED_CHOICES = {"method": tuple(UNSUITED_METHODS), "bits": (str(FLOAT_BITS),)}


@dataclass(frozen=True)
class Options:
    """The command's validated options."""

    checkpoint: Path  # the .ckpt file
    bits: int  # 1-8
    method: str
    budget_gbops: float | None  # GBOPs per image, as given
    batches: int | None  # test batches evaluated; None: all
    output: Path  # folder of the three files
    device: torch.device


@dataclass(frozen=True)
class Measurement:
    """One layer quantized alone in one mode, evaluated on the test batches."""

    layer: str
    mode: str  # one of MODES
    weight_bits: int  # as built (32: float)
    input_bits: int  # as built: the image input stays >= quant.image_input_bits
    acc: float  # test top-1, percent
    drop: float  # points: the unquantized checkpoint's accuracy minus ``acc``
    weight_error: float | None  # ||Q(w) - w||^2 / ||w||^2 of the layer's weight; None when it is float
    input_error: float | None  # the same summed over the evaluated batches' inputs of the layer; None: float


@dataclass(frozen=True)
class Sensitivity:
    """Everything one command measured (what the table, CSV and plot show)."""

    title: str  # "<model> on <data set>, method=<m>"
    checkpoint: Path
    epoch: int
    bits: int
    images: int  # test images evaluated
    calib_batches: int
    baseline_acc: float  # percent
    layers: tuple[str, ...]  # forward order
    rows: tuple[Measurement, ...]


@dataclass(frozen=True)
class Proposal:
    """A ``quant.layer_bits`` assignment under a GBOPs budget (all BOPs per image)."""

    widths: dict[str, int]  # layer -> bits, forward order
    bops: float
    budget_gbops: float  # as given: GBOPs per image
    high_bops: float  # every layer at PROPOSAL_HIGH_BITS
    low_bops: float  # every layer at the measured width: the least any proposal reaches


# ---- options ------------------------------------------------------------------------------------
def check_applicable(overrides: Sequence[str]) -> None:
    """Refuse a command-line override this command would ignore (``model=...``, ``trainer.*``): the
    network and its data come from the checkpoint."""
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        if key not in OPTION_KEYS and not key.startswith(OPTION_PREFIXES):
            raise QnnrunError(f"{override}: qnnrun sensitivity takes the model, the data set and the training settings "
                              f"from the checkpoint; its options are {', '.join(OPTION_KEYS)}, method.*, quant.*, "
                              f"paths.*")


def check_width_overrides(args: Sequence[str]) -> None:
    """Refuse ``bits=V`` on the command line unless V is 1-8 (each value of a sweep list), before the
    ``bits`` group's own check, which would offer 32."""
    for arg in args:
        key, _, value = arg.partition("=")
        for width in value.split(",") if key == "bits" else ():
            if width.strip("'\"") not in tuple(str(b) for b in QUANT_BITS):
                raise QnnrunError(f"bits={width} is not valid: valid are 1-8 (the width each layer is tested at; "
                                  f"32 is the checkpoint itself)")


def check_width(cfg: DictConfig) -> int:
    """The one width to test: ``bits=B`` with B in 1-8 that the method can run, as weights and inputs."""
    weight, inputs = cfg.bits.w, cfg.bits.a
    if weight != inputs:
        raise QnnrunError(f"bits.w={weight} bits.a={inputs}: qnnrun sensitivity tests one width for weights and "
                          f"inputs: give bits=B, B in 1-8")
    if isinstance(weight, bool) or not isinstance(weight, int) or weight not in QUANT_BITS:
        raise QnnrunError(f"bits={weight!r} is not valid: valid are 1-8 (the width each layer is tested at; "
                          f"32 is the checkpoint itself)")
    widths = METHODS[cfg.method.name].layer_widths if cfg.method.name in METHODS else None
    if widths is not None and weight not in widths:
        raise QnnrunError(f"bits={weight} is not valid with method={cfg.method.name}: valid are "
                          f"{', '.join(map(str, widths))}")
    check_mmse_width("bits", weight, cfg.quant.init, float_valid=False)
    return weight


def check_options(cfg: DictConfig) -> Options:
    """The validated options of a composed ``sensitivity`` config; each bad value is one error line."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise QnnrunError("qnnrun sensitivity needs checkpoint=PATH (a .ckpt file or a run folder holding last.ckpt)")
    method = str(cfg.method.name)
    valid = sorted(set(METHODS) - set(UNSUITED_METHODS))
    if method in UNSUITED_METHODS or method not in METHODS:
        reason = f": {UNSUITED_METHODS[method]}" if method in UNSUITED_METHODS else ""
        raise QnnrunError(f"method={method} is not valid for qnnrun sensitivity{reason}; valid are {', '.join(valid)}")
    bits = check_width(cfg)
    if cfg.quant.layer_bits is not None:
        raise QnnrunError(f"quant.layer_bits={OmegaConf.to_container(cfg.quant.layer_bits)} is not valid here: qnnrun "
                          f"sensitivity sets one rule per measurement (every other layer float); valid is null")
    budget = cfg.budget_gbops
    if budget is not None:
        budget = check_number("budget_gbops", budget, 0, None)
    batches = check_int("batches", cfg.batches, 1, optional=True)
    output = cfg.output
    if output is not None and not isinstance(output, str):
        raise QnnrunError(f"output={output!r} is not valid: expected null or a folder path")
    device = select_device(cfg.device)
    ckpt = checkpoint_file(str(cfg.checkpoint), "checkpoint")
    default = f"sensitivity_w{bits}" if method == "ste" else f"sensitivity_{method}_w{bits}"
    folder = Path(output) if output is not None else ckpt.parent / default
    return Options(ckpt, bits, method, budget, batches, folder, device)


# ---- building -----------------------------------------------------------------------------------
def run_config(saved: Mapping[str, Any], cfg: DictConfig, checkpoint: Path) -> DictConfig:
    """The checkpoint's run config with this command's method, method options and quant options,
    every layer float (bits 32, no ``quant.layer_bits``) and the checkpoint as ``init_from``."""
    run = saved_config(saved)
    with open_dict(run):
        run.method = {**OmegaConf.to_container(cfg.method, resolve=True),
                      **TRAINING_ONLY_OPTIONS.get(str(cfg.method.name), {})}
        run.quant = OmegaConf.to_container(cfg.quant, resolve=True)
        run.quant.layer_bits = None
        run.bits = {"w": FLOAT_BITS, "a": FLOAT_BITS}
        run.init_from = str(checkpoint)
    return run


def with_widths(run: DictConfig, widths: Mapping[str, LayerBits]) -> DictConfig:
    """``run`` with one ``quant.layer_bits`` rule per layer of ``widths`` (exact names, forward order)."""
    out = copy.deepcopy(run)
    with open_dict(out):
        out.quant.layer_bits = {name: {"w": bits.weight, "a": bits.input} for name, bits in widths.items()} or None
    return out


def mode_bits(mode: str, bits: int) -> LayerBits:
    """The widths a layer is given in ``mode``: weights only, inputs only, or both at ``bits``."""
    return LayerBits(bits if mode != "inputs" else FLOAT_BITS, bits if mode != "weights" else FLOAT_BITS)


def float_model(run: DictConfig, info: DataInfo, device: torch.device) -> nn.Module:
    """The checkpoint's network, every layer float, in eval mode; with ``quant.fold_bn`` its
    BatchNorms folded into the layers before them (exact in evaluation), as the method would."""
    model, _ = build_quantized_model(run, info, device, init_from=str(run.init_from))
    if run.quant.fold_bn:
        example = example_input(info, device)
        fold_batchnorm(model, batchnorm_pairs(model, example))
    return model.eval()


def quantized_copy(run: DictConfig, base: nn.Module, info: DataInfo, widths: Mapping[str, LayerBits],
                   device: torch.device) -> tuple[nn.Module, Method]:
    """A copy of the float ``base`` with the layers of ``widths`` quantized by ``run``'s method."""
    method = build_method(with_widths(run, widths))
    model = method.build(copy.deepcopy(base), example_input(info, device)).to(device)
    return model.eval(), method


def calibrate(method: Method, model: nn.Module, images: Sequence[Tensor]) -> None:
    """The method's calibration (``prepare``) on ``images`` ([B, C, H, W] batches), then every channel
    quantized and every input quantizer on: a method whose schedule starts float (nbn, fbf, lbl,
    uniq) is measured as it ends, its quantizers calibrated again on the quantized network."""
    method.prepare(model, images)
    layers = [layer for _, layer in quant_layers(model)]
    if all(layer.present_states() == {ChannelState.QUANT} and (layer.input_quant is None or layer.input_quant.enabled)
           for layer in layers):
        return
    for layer in layers:
        layer.set_channel_state(ChannelState.QUANT)
        if layer.input_quant is not None:
            layer.input_quant.enabled = True
    Method.prepare(method, model, images)


# ---- measuring ----------------------------------------------------------------------------------
def relative_error(quantized: Tensor, original: Tensor) -> float:
    """``||quantized - original||^2 / ||original||^2`` (any equal shapes), in float64; 0 for a zero tensor."""
    original = original.double()
    denominator = original.square().sum()
    if denominator == 0:
        return 0.0
    return float((quantized.double() - original).square().sum() / denominator)


class InputErrorMeter:
    """Forward hook on an input quantizer: sums ``||Q(x) - x||^2`` and ``||x||^2`` over every batch it
    quantizes (on the device, float64: one sync when read)."""

    def __init__(self, quantizer: nn.Module) -> None:
        self.sums: Tensor | None = None
        self.handle = quantizer.register_forward_hook(self._record)

    def _record(self, _module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0].detach().double()
        batch = torch.stack([(output.detach().double() - x).square().sum(), x.square().sum()])
        self.sums = batch if self.sums is None else self.sums + batch

    def close(self) -> float:
        """Remove the hook; the relative error over the batches seen (0 when none or all zero)."""
        self.handle.remove()
        if self.sums is None or float(self.sums[1]) == 0:
            return 0.0
        return float(self.sums[0] / self.sums[1])


@dataclass
class Bench:
    """What every measurement shares: the float network, its config and data, the batches."""

    run: DictConfig
    base: nn.Module
    info: DataInfo
    data: DataBundle
    device: torch.device
    train_batches: list[tuple[Tensor, Tensor]]  # calibration and BatchNorm re-estimation, drawn once
    test_batches: int | None  # None: the whole test set

    def test(self) -> Iterable[tuple[Tensor, Tensor]]:
        """The evaluated test batches: images [B, C, H, W], labels [B]."""
        return self.data.test if self.test_batches is None else itertools.islice(self.data.test, self.test_batches)

    def images(self) -> int:
        """How many test images :meth:`test` yields (the first batches are read again only when ``N`` cuts
        the test set short)."""
        if self.test_batches is None or self.test_batches >= len(self.data.test):
            return self.data.test.num_samples
        return sum(int(labels.numel()) for _, labels in self.test())

    def accuracy(self, model: nn.Module) -> float:
        """Test top-1 (percent) of ``model``, after re-estimating its BatchNorms when the method asks
        (``quant.bn_reestimate_batches``), as its runs evaluate."""
        reestimate = int(self.run.quant.bn_reestimate_batches)
        if reestimate:
            reestimate_batchnorm(model, self.train_batches[:reestimate])
        return evaluate(model, self.test(), self.info.num_classes).acc


def quantized_module(model: nn.Module, name: str) -> nn.Module:
    """The module that computes layer ``name`` in the built ``model``: the QuantLayer itself, or the one
    inside what a method put in its place (aqe and qnn wrap the last layer with an output BatchNorm)."""
    module = model.get_submodule(name)
    return next((m for m in module.modules() if isinstance(m, QuantLayer)), module)


def baseline_accuracy(bench: Bench, layer: str, bits: int) -> float:
    """Test top-1 (percent) of the network as the method builds it around quantized ``layer``, with
    that layer computing in float (every channel FLOAT, its input quantizer off): the checkpoint
    evaluated as each measurement is (a BatchNorm a method adds, BatchNorm re-estimation), unquantized."""
    model, _ = quantized_copy(bench.run, bench.base, bench.info, {layer: LayerBits(bits, bits)}, bench.device)
    for _, quant_layer in quant_layers(model):
        quant_layer.set_channel_state(ChannelState.FLOAT)
        if quant_layer.input_quant is not None:
            quant_layer.input_quant.enabled = False
    return bench.accuracy(model)


def measure(bench: Bench, layer: str, mode: str, bits: int, baseline: float) -> Measurement:
    """Quantize ``layer`` alone in ``mode`` at ``bits``, calibrate, evaluate: one :class:`Measurement`."""
    calib = int(bench.run.quant.calib_batches)
    model, method = quantized_copy(bench.run, bench.base, bench.info, {layer: mode_bits(mode, bits)}, bench.device)
    calibrate(method, model, [images for images, _ in bench.train_batches[:calib]])
    module = quantized_module(model, layer)
    weight_error = meter = None
    if isinstance(module, QuantLayer) and module.weight_quant is not None:
        with torch.no_grad():
            weight_error = relative_error(module.effective_weight(), module.weight)
    if isinstance(module, QuantLayer) and module.input_quant is not None:
        meter = InputErrorMeter(module.input_quant)
    try:
        acc = bench.accuracy(model)
    finally:
        input_error = meter.close() if meter is not None else None
    weight_bits, input_bits = ((module.weight_bits, module.input_bits) if isinstance(module, QuantLayer)
                               else (FLOAT_BITS, FLOAT_BITS))
    return Measurement(layer, mode, weight_bits, input_bits, acc, baseline - acc, weight_error, input_error)


def measure_all(bench: Bench, layers: Sequence[str], bits: int, baseline: float) -> list[Measurement]:
    """:func:`measure` for every layer (forward order) and mode, logging each line."""
    rows = []
    for index, (layer, mode) in enumerate(itertools.product(layers, MODES), start=1):
        row = measure(bench, layer, mode, bits, baseline)
        log.info("%d/%d %s %s (W%d/A%d): %.2f%% (drop %.2f)", index, len(layers) * len(MODES), layer, mode,
                 row.weight_bits, row.input_bits, row.acc, row.drop)
        rows.append(row)
    return rows


# ---- the proposal -------------------------------------------------------------------------------
def layer_bops(run: DictConfig, base: nn.Module, info: DataInfo, layers: Sequence[str], bits: int) -> dict[str, float]:
    """BOPs per image of each layer with every layer of ``layers`` at ``bits`` (weights and inputs),
    counted as ``qnnrun train`` / ``qnnrun bops`` count them (the image input stays >= 8 bits)."""
    device = next(base.parameters()).device
    model, _ = quantized_copy(run, base, info, {name: LayerBits(bits, bits) for name in layers}, device)
    bops = {cost.name: cost.bops for cost in layer_costs(model, example_input(info, device, 1))}
    return {layer: bops[layer] for layer in layers}


def check_budget(budget_gbops: float, low: Mapping[str, float], low_bits: int) -> None:
    """Raise a one-line QnnrunError naming the minimum when ``budget_gbops`` is below every layer at
    ``low_bits`` (``low``: BOPs per image of each layer)."""
    minimum = sum(low.values()) / 1e9
    if minimum > budget_gbops:
        shown = gbops_rounded_up(minimum)
        raise QnnrunError(f"budget_gbops={budget_gbops:g} is below the minimum of {shown} GBOPs per image (every "
                          f"layer at {low_bits} bits): valid are budgets >= {shown}")


def gbops_rounded_up(gbops: float, digits: int = 4) -> str:
    """``gbops`` (> 0) as text with ``digits`` significant digits, rounded up: a budget typed as shown
    is never below it."""
    text = f"{gbops:.{digits}g}"
    while float(text) < gbops:  # one unit more in the last digit shown
        value = float(text)
        text = f"{value + 10.0 ** (math.floor(math.log10(value)) - digits + 1):.{digits}g}"
    return text


def widths_bops(widths: Mapping[str, int], high: Mapping[str, float], low: Mapping[str, float]) -> float:
    """BOPs per image of ``widths`` (layer -> 8 or the low width), summed in ``widths``' order."""
    return sum(high[name] if bits == PROPOSAL_HIGH_BITS else low[name] for name, bits in widths.items())


def propose_widths(layers: Sequence[str], drops: Mapping[str, float], high: Mapping[str, float],
                   low: Mapping[str, float], budget_gbops: float, low_bits: int) -> dict[str, int]:
    """Greedy widths under ``budget_gbops`` (GBOPs per image): every layer starts at 8 bits (``high``
    BOPs each); layers are lowered to ``low_bits`` (``low`` BOPs each) in increasing order of accuracy
    drop (points, at ``low_bits``, both quantized) per BOP saved, until the sum is at most the budget.

    Returns layer -> bits in ``layers`` (forward) order; ties keep that order, a layer that saves
    nothing comes last. Raises a QnnrunError naming the minimum when all layers lowered exceed the budget.
    """
    check_budget(budget_gbops, {name: low[name] for name in layers}, low_bits)
    widths = {name: PROPOSAL_HIGH_BITS for name in layers}

    def drop_per_bop(name: str) -> float:
        saved = high[name] - low[name]
        return drops[name] / saved if saved > 0 else float("inf")

    for name in sorted(layers, key=drop_per_bop):
        if widths_bops(widths, high, low) / 1e9 <= budget_gbops:
            break
        widths[name] = low_bits
    return widths


def layer_bits_override(widths: Mapping[str, int]) -> str:
    """``quant.layer_bits={features.1: 8, classifier: 2}``: Hydra dict syntax, keys unquoted."""
    return "quant.layer_bits={" + ", ".join(f"{name}: {bits}" for name, bits in widths.items()) + "}"


# ---- outputs ------------------------------------------------------------------------------------
def format_report(result: Sensitivity, proposal: Proposal | None) -> str:
    """The table of every layer and mode, what its columns mean, and the proposal when there is one."""
    width = max(len("layer"), *(len(name) for name in result.layers))
    lines = [f"{SIGNATURE}: {result.title}, each layer alone at {result.bits} bits (every other layer float)",
             f"checkpoint {result.checkpoint} (epoch {result.epoch}); {result.images} test images; calibration on "
             f"{result.calib_batches} training batches; no training",
             f"unquantized: {result.baseline_acc:.2f}%", "",
             f"{'layer':<{width}}  {'mode':<7} {'bw':>3} {'ba':>3} {'test acc':>9} {'drop':>7} "
             f"{'weight err':>10} {'input err':>10}"]
    lines.append("-" * len(lines[-1]))
    for row in result.rows:
        errors = " ".join(f"{e:>10.3e}" if e is not None else f"{'-':>10}" for e in (row.weight_error, row.input_error))
        lines.append(f"{row.layer:<{width}}  {row.mode:<7} {row.weight_bits:>3} {row.input_bits:>3} "
                     f"{row.acc:>8.2f}% {row.drop:>7.2f} {errors}")
    lines += ["", "drop: test-accuracy points lost vs the unquantized checkpoint (negative: gained)",
              "bw, ba: weight and input bits as built (32: float; the image input stays >= quant.image_input_bits)",
              "weight err, input err: ||Q(x)-x||^2 / ||x||^2 of the layer's weight, of its input over the evaluated "
              "test batches"]
    if proposal is not None:
        lines += ["", *format_proposal(proposal, result.bits)]
    return "\n".join(lines)


def format_proposal(proposal: Proposal, bits: int) -> list[str]:
    """The proposal's lines: its GBOPs beside the budget and the two extremes, then the override."""
    lowered = [name for name, width in proposal.widths.items() if width != PROPOSAL_HIGH_BITS]
    return [f"proposal under budget_gbops={proposal.budget_gbops:g}: {proposal.bops / 1e9:.4f} GBOPs per image "
            f"(every layer at {PROPOSAL_HIGH_BITS} bits: {proposal.high_bops / 1e9:.4f}, at {bits} bits: "
            f"{proposal.low_bops / 1e9:.4f})",
            f"from {PROPOSAL_HIGH_BITS} bits, layers lowered to {bits} bits by least drop (both) per GBOP saved: "
            f"{', '.join(lowered) or 'none'}",
            f"  '{layer_bits_override(proposal.widths)}'"]


def csv_text(result: Sensitivity) -> str:
    """One CSV row per layer and mode (columns :data:`CSV_FIELDS`; an empty error: that side is float)."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for row in result.rows:
        writer.writerow([row.layer, row.mode, row.weight_bits, row.input_bits, row.acc, result.baseline_acc, row.drop,
                         "" if row.weight_error is None else row.weight_error,
                         "" if row.input_error is None else row.input_error])
    return table.getvalue()


def plot(result: Sensitivity) -> Any:
    """A matplotlib Figure: the accuracy drop of each layer (rows, forward order from the top) in each
    mode (bars), and beside it the relative errors of its weight and its input on a log scale."""
    from matplotlib.figure import Figure

    count = len(result.layers)
    figure = Figure(figsize=(12, 1.6 + 0.42 * count), layout="constrained")
    drop_axes, error_axes = figure.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    by_key = {(row.layer, row.mode): row for row in result.rows}
    positions = range(count)
    for offset, mode in zip((-0.27, 0.0, 0.27), MODES):
        drops = [by_key[(layer, mode)].drop for layer in result.layers]
        bars = drop_axes.barh([p + offset for p in positions], drops, height=0.27, label=f"{mode} quantized")
        drop_axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    drop_axes.axvline(0, color="black", linewidth=0.8)
    drop_axes.set_xlabel(f"test-accuracy drop (points) from the unquantized {result.baseline_acc:.2f}%")
    drop_axes.set_yticks(list(positions), [_tick_label(layer, by_key, result.bits) for layer in result.layers])
    drop_axes.set_ylim(count - 0.5, -0.5)  # the first layer on top
    drop_axes.margins(x=0.12)
    drop_axes.grid(axis="x", alpha=0.3)
    drop_axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    _plot_errors(error_axes, result, by_key)
    figure.suptitle(f"{result.title}: each layer alone at {result.bits} bits, {result.images} test images")
    return figure


def _tick_label(layer: str, by_key: Mapping[tuple[str, str], Measurement], bits: int) -> str:
    """The layer's name, and the width its input ran at when that is not ``bits`` (the image input)."""
    input_bits = by_key[(layer, "inputs")].input_bits
    if input_bits == bits:
        return layer
    return f"{layer} (input {'float' if input_bits == FLOAT_BITS else f'{input_bits} bits'})"


def _plot_errors(axes: Any, result: Sensitivity, by_key: Mapping[tuple[str, str], Measurement]) -> None:
    """Relative squared error of each layer's weight and input (bars, log scale; absent when float)."""
    for offset, mode, label in ((-0.2, "weights", "weight"), (0.2, "inputs", "input")):
        values = [getattr(by_key[(layer, mode)], f"{label}_error") for layer in result.layers]
        shown = [(index + offset, value) for index, value in enumerate(values) if value]
        if shown:
            axes.barh(*zip(*shown), height=0.4, label=f"{label} ({mode} quantized)",
                      color="C3" if label == "weight" else "C4")
    axes.set_xscale("log")
    axes.set_xlabel("relative squared error ||Q(x)-x||² / ||x||²")
    axes.grid(axis="x", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)


def is_own_output(path: Path) -> bool:
    """Whether the file ``path`` was written by this command (its CSV header, its text file's first
    words, its PNG's Software tag), so it may be replaced."""
    with path.open("rb") as file:
        head = file.read(1 << 16)
    if path.name == CSV_FILE:
        return head.split(b"\n", 1)[0] == ",".join(CSV_FIELDS).encode()
    if path.name == TEXT_FILE:
        return head.startswith(SIGNATURE.encode())
    return head.startswith(b"\x89PNG") and b"Software\x00" + SIGNATURE.encode() in head


def check_output(folder: Path) -> None:
    """Before anything is measured: ``folder`` can be made (or is a folder) and holds no file of the
    outputs' names that this command did not write. Creates nothing."""
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise QnnrunError(f"output={folder} cannot be a folder: {blocker} is not a folder; choose another with "
                          f"output=DIR")
    for name in (TEXT_FILE, CSV_FILE, PNG_FILE):
        path = folder / name
        if path.exists() or path.is_symlink():
            check_output_file(path, "output")
            if not is_own_output(path):
                raise QnnrunError(f"output={folder} holds {name}, which qnnrun sensitivity did not write: it is not "
                                  f"replaced; choose another folder with output=DIR or move the file")


def write_outputs(folder: Path, text: str, result: Sensitivity) -> None:
    """Write the text, CSV and PNG files into ``folder`` (created, with its parents, when absent; removed
    again, with what was written, when a write fails: :func:`~qnnrun.checkpoint.new_folder`)."""
    created = not folder.exists()
    figure = plot(result)
    with new_folder(folder, "output"):
        try:
            write_text_atomic(folder / TEXT_FILE, text + "\n")
            write_text_atomic(folder / CSV_FILE, csv_text(result))
            replace_atomic(folder / PNG_FILE, lambda file: figure.savefig(file, format="png", dpi=110,
                                                                        metadata={"Software": SIGNATURE}))
        except BaseException:
            if created:
                for name in (TEXT_FILE, CSV_FILE, PNG_FILE):
                    (folder / name).unlink(missing_ok=True)
            raise


def check_checkpoint_method(saved: DictConfig, checkpoint: Path) -> None:
    """Refuse, in one line, a checkpoint whose network is not the float model with its weights: a
    bnn/qnn/aqe run computes with hard-tanh activations (and a BatchNorm on the logits),
    which the float model that every measurement starts from does not have."""
    name = str(saved.method.name)
    if issubclass(METHODS.get(name, Method), LatentWeightMethod):
        valid = sorted(n for n, cls in METHODS.items() if not issubclass(cls, LatentWeightMethod))
        raise QnnrunError(f"checkpoint={checkpoint} is a method={name} run: its network (hard-tanh activations, "
                          f"a BatchNorm on the logits) is not the float model qnnrun sensitivity quantizes one layer "
                          f"at a time; valid are checkpoints of {', '.join(valid)} runs")


# ---- the command --------------------------------------------------------------------------------
def load_network(cfg: DictConfig, options: Options) -> tuple[DictConfig, DataInfo, nn.Module, int]:
    """The run config (:func:`run_config`), data-set shape, float network (on the device) and epoch of
    the checkpoint; a bad quant option fails here, before any data is read."""
    ckpt = load_checkpoint(options.checkpoint)
    check_checkpoint_method(saved_config(ckpt["config"]), options.checkpoint)
    run = run_config(ckpt["config"], cfg, options.checkpoint)
    check_int("quant.calib_batches", run.quant.calib_batches, 1)  # nothing is trained: the ranges need data
    validate_quant(with_widths(run, {"*": LayerBits(options.bits, options.bits)}))
    info = DataInfo(**ckpt["info"])
    return run, info, float_model(run, info, options.device), int(ckpt["epoch"])


def read_data(cfg: DictConfig, options: Options, run: DictConfig, info: DataInfo, base: nn.Module) -> Bench:
    """The :class:`Bench`: the checkpoint's data set (from :func:`saved_run_paths`) and its first training
    batches, drawn once so every measurement calibrates (and re-estimates BatchNorm) on the same images."""
    data_dir, cache_dir = saved_run_paths(run, cfg.paths)
    data = build_data(run.dataset, data_dir=data_dir, cache_dir=cache_dir, device=options.device, seed=run.seed)
    draws = max(int(run.quant.calib_batches), int(run.quant.bn_reestimate_batches))
    train_batches = list(itertools.islice(data.train, draws))
    return Bench(run, base, info, data, options.device, train_batches, options.batches)


def run_sensitivity(cfg: DictConfig, options: Options) -> tuple[Sensitivity, Proposal | None]:
    """Measure every layer and mode of ``options.checkpoint`` and, with a budget, propose widths
    under it (a budget below every layer at ``bits`` fails before the data is read). Writes nothing."""
    run, info, base, epoch = load_network(cfg, options)
    layers = forward_order(base, example_input(info, options.device))
    bops = None
    if options.budget_gbops is not None:
        bops = {bits: layer_bops(run, base, info, layers, bits) for bits in (PROPOSAL_HIGH_BITS, options.bits)}
        check_budget(options.budget_gbops, bops[options.bits], options.bits)
    bench = read_data(cfg, options, run, info, base)
    baseline = baseline_accuracy(bench, layers[-1], options.bits)
    rows = measure_all(bench, layers, options.bits, baseline)
    result = Sensitivity(f"{run.model.name} on {info.name}, method={options.method}", options.checkpoint, epoch,
                         options.bits, bench.images(), int(run.quant.calib_batches), baseline, tuple(layers),
                         tuple(rows))
    if bops is None:
        return result, None
    high, low = bops[PROPOSAL_HIGH_BITS], bops[options.bits]
    drops = {row.layer: row.drop for row in rows if row.mode == "both"}
    widths = propose_widths(layers, drops, high, low, options.budget_gbops, options.bits)
    return result, Proposal(widths, widths_bops(widths, high, low), options.budget_gbops, sum(high.values()),
                            sum(low.values()))


def sensitivity_report(cfg: DictConfig, overrides: Sequence[str]) -> str:
    """``qnnrun sensitivity``: check the options, measure, write ``sensitivity.{txt,csv,png}`` into the
    output folder, and return the report (the table, and the proposal with ``budget_gbops``)."""
    check_applicable(overrides)
    options = check_options(cfg)
    check_output(options.output)
    result, proposal = run_sensitivity(cfg, options)
    text = format_report(result, proposal)
    write_outputs(options.output, text, result)
    return text + f"\nwritten: {options.output / TEXT_FILE}, {CSV_FILE}, {PNG_FILE}"
