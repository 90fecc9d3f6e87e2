"""``qnnrun report PATH...``: one table and three plots across runs.

A run is a folder holding ``summary.json`` (written by the engine when a run is done, or by
:mod:`qnnrun.sweep` when it failed) or, for a run cut off before it finished, ``last.ckpt`` /
TensorBoard events without one. Runs are grouped by everything but the seed: method, model, data
set, weight and activation bits, epochs and every other key set on the command line
(``.hydra/overrides.yaml``), except the keys given to ``--ignore`` (e.g. ``init_from`` when each
seed fine-tunes its own float run). A run that leaves such a key (one other runs set) at its default
takes the value its ``.hydra/config.yaml`` holds, where that is a plain value: so ``method.stages=3``
typed and the default 3 are one group, and ``--paired method.stages=3`` finds the runs at the default.
Values have one spelling (:func:`canonical`: ``optim.lr=1e-2`` and ``0.01`` are one).
Each group reports mean and sample standard deviation over its finished runs; runs that started
from a trained net (``init_from``) also the change in final test accuracy from that net's
(``vs init_from``, points: what quantization cost).

Every folder is read once, by :func:`read_folder`, into either a :class:`Run` whose values have
their types and ranges (an :class:`Identity` of names and integers, metrics that are finite numbers
in their range) or a :class:`Problem` naming what did not fit: unreadable or hand-edited records, and
duplicate records (a sweep job that repeated an earlier job's run points at it with ``same_as``; the
run counts once, there). Tables, grouping, sorting and plots only ever see validated values.

Writes into the output folder::

    report.md                 the tables (also printed), failed, unfinished, unreadable and duplicate
                              runs with the reason (unfinished: the last epoch logged and its test
                              accuracy); with ``--epochs 1,10,30`` also test (and train) accuracy at
                              those epochs; with ``--paired method=ste`` also each group's paired
                              difference from its baseline group (below)
    report.csv                one row per group: counts, mean and std of every metric
    accuracy_vs_bits.png      final test accuracy (%) against weight bits, one line per method
    accuracy_vs_gbops.png     final test accuracy (%) against GBOPs per image (log x), Pareto front
                              marked, every point labelled
    test_accuracy_curves.png  test accuracy (%) per epoch from the TensorBoard events, one panel per
                              bit width (shared axes), methods overlaid

Every plot draws a method in one colour and marker (the same in every report), error bars (sample
std over seeds) where a group has several finished runs, markers of equal or near-equal value side
by side rather than over each other, labels that overlap nothing, and its legend beside the data.
The bits plot and the curves mark the init_from net's accuracy (dotted) when every run started from one.
Where the quantized runs compared differ in their first/last-layer policy (``quant.first_layer`` /
``quant.last_layer``: float, 8 bits or the run's own bits, read from ``.hydra/config.yaml``; GBOPs
and weight size change several-fold with it), the report says so in a note, and tables and plot
labels name each run's policy (``first/last=fp``).

``--paired KEY=VALUE`` compares each group with its baseline: the group whose ``KEY`` (``method`` or
an override key) is ``VALUE`` and which agrees with it in everything else (data set, model, bits,
every other override; bits are not compared against a float baseline, which counts only where no
baseline at the group's bits does; epochs only where several baselines differ in them, so SQ's arms,
4 and 16 epochs long, pair). Several pairs in one argument name a baseline by all of them
(``--paired "method=ste trainer.grad_clip=1.0"``). A ``method.<option>`` that one of the two runs'
methods does not read (not in its ``conf/method/<name>.yaml``) is no difference: between two methods
it is part of the method compared (UNIQ's one-stage arm and AQE's rising alpha pair with ste or bnn),
and a method ignores it in its own runs (a preset's shared option block). Another key only one group
has is no difference where that group left it at its default (read from its config). Runs are paired
by seed: the difference in final test accuracy (points) per seed both finished, its mean ± sample
std, and in how many seeds the group is above its baseline; groups whose lengths differ are named
with them. Groups left unpaired are listed with the reason. A baseline no finished group has is
refused as a typo unless some runs are unfinished (a sweep in progress): then the section says so.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from qnnrun.checkpoint import check_output_folder
from qnnrun.config import method_options
from qnnrun.errors import QnnrunError
from qnnrun.methods import METHODS
from qnnrun.quant.convert import FLOAT_BITS, LAYER_POLICIES
from qnnrun.runs import STEP_CURVES, SUMMARY, is_free

# Per-run values averaged in a group: summary key -> column title.
METRICS = {
    "test_acc": "test acc %",
    "vs_init": "vs init_from",
    "best_test_acc": "best acc %",
    "gbops": "GBOPs",
    "weight_memory_mb": "weights MiB",
    "compression": "compression",
    "train_time_s": "train s",
}
# Metrics that vary between seeds; the costs (GBOPs, size) are fixed by the config.
SPREAD = ("test_acc", "vs_init", "best_test_acc", "train_time_s")
# Shown only where some run has them: the change in final test accuracy (points) from the
# init_from checkpoint's (summary.json's init_test_acc; runs that started from a trained net).
OPTIONAL = ("vs_init",)
# The largest cost or time a record may hold: far above any real run, and far enough below the
# float range that sums, standard deviations and log axes over many runs stay finite.
MAX_COST = 1e15
# The numbers of a finished run's summary.json the report reads: key -> (lowest, highest) valid
# value (accuracies are percentages); test_acc is required, the others may be absent or null.
NUMBERS = {"test_acc": (0.0, 100.0), "best_test_acc": (0.0, 100.0), "init_test_acc": (0.0, 100.0),
           "gbops": (0.0, MAX_COST), "weight_memory_mb": (0.0, MAX_COST), "compression": (0.0, MAX_COST),
           "train_time_s": (0.0, MAX_COST)}
# Overrides that identify a run already through its Identity (the settings that do not change a
# run's result, qnnrun.runs.FREE_KEYS, are not grouped either).
NOT_GROUPED = {"seed", "method", "model", "dataset", "bits", "bits.w", "bits.a", "trainer.epochs", "quant.layer_bits"}
# A search preset's variables (search.<name>) set a mixed run's widths, which its identity holds already.
SEARCH_PREFIX = "search."
CURVE_TAG = "test/acc"
TRAIN_CURVE_TAG = "train/acc"
CURVE_TAGS = (CURVE_TAG, TRAIN_CURVE_TAG)  # what Run.curves reads
# One colour and one marker per method qnnrun knows, in every plot of every report (two reports
# agree); a method not known here is drawn grey. Series of one method in a plot differ by line style
# and by a shade of the method's colour (SHADES); a mixed-precision series has hollow markers.
# matplotlib's ten, then black, magenta and indigo: any two at least 27 CIELAB units apart (the closest
# pair, purple and pink, is matplotlib's own).
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#ff00ff", "#000000", "#4b0082")
MARKERS = "os^Dv<>PX*hpd"
LINE_STYLES = ("-", "--", ":", "-.")
# The k-th series of one method in a plot: its colour mixed towards white (> 0) or black (< 0) by this
# fraction; the first keeps the method's own colour.
SHADES = (0.0, 0.45, -0.35, 0.25, -0.2, 0.6)
# Plot geometry (sizes in points unless said otherwise).
DPI = 120  # of the PNGs
MARKER_SIZE = 6.0
DODGE_GAP = 1.5  # between markers set side by side so that none hides another
CAP_SIZE = 3.0  # error bar caps, half across
FRONT_CIRCLE = 12.0  # around a point of the Pareto front, across
BITS_SLOT = 0.8  # of the gap between two bit widths, the most that the markers set side by side at one take
MAX_WIDTH = 16.0  # inches: the widest a crowded accuracy-vs-bits plot grows to give them that room
LEGEND_ROWS = 24  # entries per legend column
# Point labels (accuracy vs GBOPs): font size (points); pixels kept free around a label, and beside
# another label (so that two side by side do not read as one); how far a label may go from its point
# (label heights); how near other points make a point crowded (its label is placed first; points);
# points along a line joining a label to its point that later labels keep clear of.
LABEL_FONT = 6.5
LABEL_PAD = 1.5
LABEL_SPACE = 6.0
LABEL_REACH = 12
CROWD = 36.0
LEADER_SAMPLES = 12
# The statuses of summary.json; a run folder without one is UNFINISHED.
DONE, FAILED, DUPLICATE, UNFINISHED = "done", "failed", "duplicate", "unfinished"
# A folder whose record does not fit (a Problem, not a run).
INVALID = "invalid"
# Method, model and data set names as qnnrun's configs spell them.
NAME = re.compile(r"[A-Za-z0-9_.+-]+")
# How a reader of a file that may hold anything fails: missing or unreadable file, bytes that are
# not UTF-8, text that is not JSON / YAML, nesting too deep to parse.
UNREADABLE = (OSError, ValueError, yaml.YAMLError, RecursionError)
OVERRIDES_FILE = Path(".hydra", "overrides.yaml")
CONFIG_FILE = Path(".hydra", "config.yaml")
# The first/last-layer policy (float, 8 bits or the run's own bits: GBOPs and weight size change
# several-fold with it): the config keys, and the name labels and tables give it where runs differ in it.
LAYER_KEYS = ("quant.first_layer", "quant.last_layer")
LAYERS = "first/last"


@dataclass(frozen=True, order=True)
class Identity:
    """What a run computes, its seed aside; the fields are in the order groups are sorted by, and
    each has one type, so that identities always compare."""

    dataset: str
    model: str
    method: str
    bits_w: int
    bits_a: int
    epochs: int
    layer_bits: str = ""  # a mixed run's widths per layer, forward order: "w 8,4,2 a 8,4,8"; "" for one width

    @property
    def mixed(self) -> bool:
        """Whether per-layer rules (quant.layer_bits) set the widths; ``bits_w`` / ``bits_a`` do not tell them."""
        return bool(self.layer_bits)

    @property
    def is_float(self) -> bool:
        """Whether weights and inputs are float (a float run)."""
        return self.bits_w == self.bits_a == FLOAT_BITS

    @property
    def bits_label(self) -> str:
        if self.mixed:
            return f"mixed[{self.layer_bits}]"
        return "FP32" if self.is_float else f"W{self.bits_w}A{self.bits_a}"


@dataclass
class Run:
    """One run folder, validated: ``status`` is done, failed or unfinished (no summary.json yet)."""

    path: Path
    status: str
    metrics: dict[str, float]  # done runs: the NUMBERS their summary.json holds, and vs_init
    overrides: dict[str, str]  # the grouping ones
    command_line: list[str]  # every override as given
    reason: str = ""  # failed: the error line; unfinished: how far it got
    identity: Identity | None = None  # None: a failed or unfinished run no group can hold
    seed: int | None = None
    notes: list[str] = field(default_factory=list)  # what could not be read beside the record
    layers: tuple[str, str] | None = None  # done runs: (first, last) layer policy of .hydra/config.yaml, if told

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """The run's ``.hydra/config.yaml``, read once per report (empty, with a note, when unreadable)."""
        return _read_config(self.path, self.notes)

    @functools.cached_property
    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """Tag -> (epoch, value) of each of ``CURVE_TAGS``, its TensorBoard events read once per report;
        empty, with a note, when the events cannot be read."""
        try:
            return read_curves(self.path, CURVE_TAGS)
        except Exception as error:  # TensorBoard's reader over whatever bytes the files hold
            self.notes.append(f"TensorBoard events: unreadable ({_error_line(error)}), no curves")
            return {tag: [] for tag in CURVE_TAGS}


@dataclass(frozen=True)
class Problem:
    """A folder that holds no run to count: a record that does not fit (``invalid``: the reason
    says which value), or a ``duplicate`` record pointing at the run it repeats."""

    path: Path
    kind: str
    reason: str
    command_line: tuple[str, ...] = ()


@dataclass
class Group:
    """Runs that differ at most in their seed."""

    identity: Identity
    extras: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    @property
    def defaults(self) -> set[str]:
        """The keys of ``extras`` no run of the group typed: values read from their configs."""
        return {key for key in self.extras if not any(key in run.overrides for run in self.runs)}

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.status == DONE]

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.done if metric in r.metrics]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else None

    @property
    def bits_label(self) -> str:
        return self.identity.bits_label

    @property
    def layers(self) -> str | None:
        """The first/last-layer policy of the finished runs as tables show it: ``fp``, ``8`` or ``same``
        when both layers share it, else ``first/last`` (``8/fp``); None for float runs (where it changes
        nothing) and where no run's config tells it."""
        if self.identity.mixed or self.identity.is_float:
            return None  # float: it changes nothing; mixed: the widths say what each layer ran at
        told = sorted({first if first == last else f"{first}/{last}" for first, last in
                       (r.layers for r in self.done if r.layers)})
        return " or ".join(told) or None


class _Unfit(Exception):
    """A file, or a value in it, that does not fit the record; the message is the reason shown in
    the report: ``summary.json: bits_w "2" is not an integer in [1, 32]``."""

    def __init__(self, reason: str, file: Path | str = SUMMARY) -> None:
        super().__init__(f"{file}: {reason}")


def _show(value: Any, limit: int = 40) -> str:
    """``value`` as summary.json spells it, cut to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _error_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _name(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise _Unfit(f"{key} {_show(value)} is not a name (letters, digits, _ . + -)")
    return value


def _integer(record: Mapping[str, Any], key: str, low: float = -math.inf, high: float = math.inf) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Unfit(f"{key} {_show(value)} is not an integer{_bounds(low, high)}")
    return value


def _bounds(low: float, high: float) -> str:
    if high == math.inf:
        return "" if low == -math.inf else f" >= {low:g}"
    return f" in [{low:g}, {high:g}]"


def _number(record: Mapping[str, Any], key: str) -> float | None:
    """A finite number in the key's range (``NUMBERS``); ``None`` when absent or null."""
    value = record.get(key)
    if value is None:
        return None
    low, high = NUMBERS[key]
    # NaN and infinities fail the range check; comparing a huge int needs no conversion to float.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _Unfit(f"{key} {_show(value)} is not a number in [{low:g}, {high:g}]")
    return float(value)


def _identity(record: Mapping[str, Any], done: bool) -> Identity:
    """A finished run's bits are 1 to 32 and its epochs at least 0; a failure record keeps the bad
    value that failed it (``bits.w=9``) as long as it is an integer."""
    bits: tuple[float, float] = (1, FLOAT_BITS) if done else (-math.inf, math.inf)
    return Identity(dataset=_name(record, "dataset"), model=_name(record, "model"), method=_name(record, "method"),
                    bits_w=_integer(record, "bits_w", *bits), bits_a=_integer(record, "bits_a", *bits),
                    epochs=_integer(record, "epochs", 0 if done else -math.inf), layer_bits=_layer_bits(record))


def _layer_bits(record: Mapping[str, Any]) -> str:
    """``layer_bits`` of a record (layer -> {w, a} in forward order; null or absent: none) as one text:
    the weight widths, then the input widths, layer by layer (``w 8,4,2 a 8,4,8``)."""
    rules = record.get("layer_bits")
    if rules is None:
        return ""
    if not isinstance(rules, Mapping) or not all(
            isinstance(bits, Mapping) and all(isinstance(bits.get(k), int) and not isinstance(bits.get(k), bool)
                                              for k in ("w", "a")) for bits in rules.values()):
        raise _Unfit(f"layer_bits {_show(rules)} is not a mapping of layer patterns to {{w, a}} bits")
    return " ".join(f"{side} " + ",".join(str(bits[side]) for bits in rules.values()) for side in ("w", "a"))


def _present(file: Path) -> bool:
    """Whether ``file`` exists (a broken link too); when it cannot be told (no permission to look),
    reading it will say why it fails."""
    try:
        return file.exists() or file.is_symlink()
    except OSError:
        return True


def _load_summary(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UNREADABLE as error:
        raise _Unfit(f"unreadable ({_error_line(error)})") from None
    if not isinstance(record, dict):
        raise _Unfit(f"holds {_show(record)}, not a record of its keys")
    return record


def _read_command_line(folder: Path, record: Mapping[str, Any]) -> list[str]:
    """The overrides the run was started with: ``.hydra/overrides.yaml``, else the record's own."""
    file = folder / OVERRIDES_FILE
    if _present(file):
        try:
            lines = yaml.safe_load(file.read_text(encoding="utf-8"))
        except UNREADABLE as error:
            raise _Unfit(f"unreadable ({_error_line(error)})", OVERRIDES_FILE) from None
        where, what = OVERRIDES_FILE, "holds"
    else:
        lines, where, what = record.get("overrides", []), SUMMARY, "overrides"
    if lines is None:  # an empty file
        lines = []
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise _Unfit(f"{what} {_show(lines)}, not a list of key=value lines", where)
    return lines


def _parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    """``key=value`` override lines -> {key: value} (the value in its :func:`canonical` spelling)
    without the grouping-neutral keys."""
    parsed = {}
    for line in lines:
        key, sep, value = line.partition("=")
        key = key.lstrip("+~")
        if sep and key not in NOT_GROUPED and not is_free(key) and not key.startswith("hydra"):
            parsed[key] = canonical(value)
    return parsed


@functools.lru_cache(maxsize=4096)  # a sweep's runs repeat the same few values; a parse is about 0.5 ms
def canonical(value: str) -> str:
    """One spelling per value an override can give, as Hydra's override parser reads it: whole
    numbers as integers (``3``, ``1.0`` -> ``1``, ``1_000`` -> ``1000``), other numbers as Python
    writes the float (``1e-2`` and ``.01`` are ``0.01``), ``true`` / ``false`` / ``null`` in lower
    case, a quoted text without its quotes; anything else (lists, sweeps, what does not parse) as
    given. Config values are written alike (:func:`_config_text`), so a typed value and a default meet."""
    try:
        parsed = _override_parser().parse_override(f"key={value}").value()
    except Exception:  # Hydra's grammar errors: left as typed (the run was started with it)
        return value
    text = _plain_text(parsed)
    return value if text is None else text


@functools.cache
def _override_parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _plain_text(value: Any) -> str | None:
    """A plain value (number, text, true/false, null) as :func:`canonical` spells it; None for others."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value if isinstance(value, str) else None


def read_folder(folder: Path) -> Run | Problem:
    """The run in ``folder``, its values validated, or the Problem that names what did not fit."""
    summary = folder / SUMMARY
    if not _present(summary):
        return _unfinished(folder)
    record: dict[str, Any] = {}
    try:
        record = _load_summary(summary)
        status = record.get("status")
        if status == DONE:
            return _done(folder, record)
        if status == FAILED:
            return _failed(folder, record)
        if status == DUPLICATE:
            return _duplicate(folder, record)
        raise _Unfit(f"status {_show(status)} is not {DONE!r}, {FAILED!r} or {DUPLICATE!r}")
    except _Unfit as unfit:
        return Problem(folder, INVALID, str(unfit), _best_effort_command_line(folder, record))


def _best_effort_command_line(folder: Path, record: Mapping[str, Any]) -> tuple[str, ...]:
    try:
        return tuple(_read_command_line(folder, record))
    except _Unfit:
        return ()


def _done(folder: Path, record: Mapping[str, Any]) -> Run:
    identity, seed = _identity(record, done=True), _integer(record, "seed")
    metrics = {key: value for key in NUMBERS if (value := _number(record, key)) is not None}
    if "test_acc" not in metrics:
        raise _Unfit("test_acc is missing")
    if "init_test_acc" in metrics:
        metrics["vs_init"] = metrics["test_acc"] - metrics["init_test_acc"]
    lines = _read_command_line(folder, record)
    run = Run(folder, DONE, metrics, _parse_overrides(lines), lines, identity=identity, seed=seed)
    run.layers = _layer_policy(run.config)
    return run


def _layer_policy(config: Mapping[str, Any]) -> tuple[str, str] | None:
    """(first, last) layer policy (each one of ``LAYER_POLICIES``) of a run's config; None where it
    does not tell both."""
    quant = config.get("quant")
    if not isinstance(quant, dict):
        return None
    # YAML reads the policy 8 as an integer.
    policy = tuple(str(value) for value in (quant.get("first_layer"), quant.get("last_layer"))
                   if isinstance(value, (str, int)) and not isinstance(value, bool))
    return (policy[0], policy[1]) if len(policy) == 2 and set(policy) <= set(LAYER_POLICIES) else None


def _failed(folder: Path, record: Mapping[str, Any]) -> Run:
    """A failure record: listed with its error; placed in its group when its identity and overrides
    can be read (a sweep's failed bits sit beside their finished siblings), else listed only."""
    error = record.get("error")
    reason = error if isinstance(error, str) and error.strip() else f"error {_show(error)} (no error line)"
    identity: Identity | None = None
    lines: list[str] = []
    try:
        lines = _read_command_line(folder, record)
        identity = _identity(record, done=False)
    except _Unfit as unfit:
        reason += f" (not grouped: {unfit})"
    seed = record.get("seed")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    return Run(folder, FAILED, {}, _parse_overrides(lines), lines, reason=reason, identity=identity, seed=seed)


def _duplicate(folder: Path, record: Mapping[str, Any]) -> Problem:
    first = record.get("same_as")
    if not isinstance(first, str) or not first.strip():
        raise _Unfit(f"a duplicate whose same_as {_show(first)} is not a folder")
    return Problem(folder, DUPLICATE, f"the same run as {first}: counted once, there",
                   _best_effort_command_line(folder, record))


def _unfinished(folder: Path) -> Run:
    lines: list[str] = []
    notes = []
    try:
        lines = _read_command_line(folder, {})
    except _Unfit as unfit:
        notes.append(str(unfit))
    run = Run(folder, UNFINISHED, {}, _parse_overrides(lines), lines, notes=notes)
    run.reason = f"no {SUMMARY}: interrupted or still running{_progress(run)}"
    return run


def _progress(run: Run) -> str:
    """``", at epoch 12 of 30 (test acc 79.20%)"`` for a run without summary, from its TensorBoard
    events and its config; empty when it logged no epoch."""
    total = _planned_epochs(run)
    curve = run.curves[CURVE_TAG]
    if not curve:
        return ""
    epoch, acc = curve[-1]
    return f", at epoch {epoch}{total} (test acc {acc:.2f}%)"


def _read_config(folder: Path, notes: list[str]) -> dict[str, Any]:
    """The run's ``.hydra/config.yaml``; empty when absent, not a mapping or unreadable (with a note)."""
    file = folder / CONFIG_FILE
    if not _present(file):
        return {}
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UNREADABLE as error:
        notes.append(f"{CONFIG_FILE}: unreadable ({_error_line(error)})")
        return {}
    return config if isinstance(config, dict) else {}


def _config_text(config: Mapping[str, Any], key: str) -> str | None:
    """The plain value (number, text, true/false, null) at dotted ``key`` of a run's config in the
    :func:`canonical` spelling of an override (``3``, ``0.01``, ``true``, ``null``); None where the
    config has no plain value there (no such key, a group or a list)."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, str) and "${" in value:  # an interpolation Hydra left unresolved is no value
        return None
    return _plain_text(value)


def _planned_epochs(run: Run) -> str:
    """``" of 30"`` from the run's ``.hydra/config.yaml``; empty (with a note when unreadable) if unknown."""
    trainer = run.config.get("trainer")
    try:
        epochs = _integer(trainer if isinstance(trainer, dict) else {}, "epochs", 0)
    except _Unfit:
        return ""
    return f" of {epochs}"


def find_runs(paths: Sequence[Path]) -> tuple[list[Run], list[Problem]]:
    """Every run under ``paths`` (each a run folder, a sweep folder or any folder above them), and
    every folder there whose record does not fit or repeats another run; both sorted by folder."""
    found: dict[Path, Run | Problem] = {}
    for path in paths:
        if not path.is_dir():
            raise QnnrunError(f"{path} is not a folder: give run folders, sweep folders or outputs/")
        folders = {p.parent for p in path.rglob(SUMMARY)}
        folders |= {p.parent for p in path.rglob("last.ckpt")}
        folders |= {p.parent for p in path.rglob("events.out.tfevents.*")}
        # A run's own TensorBoard sub-writers (<run>/steps) hold events but are not runs.
        folders = {f for f in folders if f.name != STEP_CURVES or f.parent not in folders}
        if not folders:
            raise QnnrunError(f"no runs under {path}: expected folders holding {SUMMARY}, last.ckpt or "
                              f"TensorBoard events (a run, a sweep folder or outputs/)")
        for folder in folders:
            if folder.resolve() not in found:
                found[folder.resolve()] = read_folder(folder)
    ordered = sorted(found.values(), key=lambda r: str(r.path))
    return [r for r in ordered if isinstance(r, Run)], [r for r in ordered if isinstance(r, Problem)]


@functools.lru_cache(maxsize=256)
def _reads(method: str, key: str) -> bool:
    """Whether runs of ``method`` read override ``key``: every key but a ``method.<option>`` that is
    not among :func:`~qnnrun.config.method_options` (``method.alpha_end`` for bnn, ``method.stages``
    for ste; ``method.name`` is read); a method without a config file reads every key."""
    if not key.startswith("method.") or key == "method.name":
        return True
    options = method_options(method)
    return options is None or key.split(".")[1] in options


def group_runs(runs: Sequence[Run], ignore: Collection[str] = ()) -> list[Group]:
    """Runs with a known identity, grouped by it and by their other overrides (seed and the override
    keys in ``ignore`` aside), in the order of their identities and overrides."""
    groups: dict[tuple[Identity, tuple[tuple[str, str], ...]], Group] = {}
    keys = sorted({key for run in runs for key in run.overrides if key not in ignore})
    for run in runs:
        if run.identity is None:
            continue
        # A mixed run's widths are its identity: the search variables and the first/last-layer policy
        # (which its layer rules override) tell nothing more; nor does an option its method ignores.
        wanted = [k for k in keys if _reads(run.identity.method, k)
                  and not (run.identity.mixed and (k.startswith(SEARCH_PREFIX) or k in LAYER_KEYS))]
        values = ((k, run.overrides[k] if k in run.overrides else _config_text(run.config, k)) for k in wanted)
        extras = {k: v for k, v in values if v is not None}
        key = (run.identity, tuple(sorted(extras.items())))
        groups.setdefault(key, Group(run.identity, extras)).runs.append(run)
    return [groups[key] for key in sorted(groups)]


def _varying_keys(groups: Sequence[Group]) -> list[str]:
    """Override keys whose value is not the same in every group: the columns worth showing; last
    ``LAYERS`` (in place of the override keys that set it) when the quantized groups differ in their
    first/last-layer policy."""
    keys = sorted({k for g in groups for k in g.extras})
    varying = [k for k in keys if len({g.extras.get(k, "") for g in groups}) > 1]
    if len({g.layers for g in groups if g.layers}) > 1:
        varying = [k for k in varying if k not in LAYER_KEYS] + [LAYERS]
    return varying


def _shown_value(group: Group, key: str) -> str:
    """The group's value of a key of ``_varying_keys``; empty where it has none."""
    return (group.layers or "") if key == LAYERS else group.extras.get(key, "")


def _label(group: Group, shown: Sequence[str], with_bits: bool = True) -> str:
    parts = [group.identity.method]
    if with_bits:
        parts.append(group.bits_label)
    parts += [f"{k}={_shown_value(group, k)}" for k in shown if _shown_value(group, k)]
    return " ".join(parts)


def layer_policy_note(groups: Sequence[Group]) -> str:
    """A note naming the first/last-layer policies of the quantized groups and the methods of each,
    when they differ (their GBOPs and weight sizes are then not those of one network); empty otherwise."""
    methods: dict[str, set[str]] = defaultdict(set)
    for g in groups:
        if g.layers:
            methods[g.layers].add(g.identity.method)
    if len(methods) < 2:
        return ""
    each = "; ".join(f"{LAYERS}={policy}: {', '.join(sorted(names))}" for policy, names in sorted(methods.items()))
    return (f"**Note: the rows compared differ in their first/last-layer policy** ({' / '.join(LAYER_KEYS)}: "
            f"fp = float, 8 = 8 bits, same = the run's own bits), which changes GBOPs and weight size "
            f"several-fold: {each}. Tables and plot labels give it as {LAYERS}=...")


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _cell(value: Any) -> str:
    """``value`` as one table cell: a ``|`` or a line break in an error or a path cannot split the row."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    header = [_cell(c) for c in header]
    rows = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def _metrics(groups: Sequence[Group]) -> list[str]:
    """The metrics worth a column: all but the OPTIONAL ones that no run has."""
    return [m for m in METRICS if m not in OPTIONAL or any(g.values(m) for g in groups)]


def summary_table(groups: Sequence[Group]) -> str:
    """One row per group: identity, varying overrides, run counts, mean ± std of every metric."""
    shown = _varying_keys(groups)
    metrics = _metrics(groups)
    header = ["method", "model", "dataset", "bits", "epochs", *shown, "runs", "failed", *[METRICS[m] for m in metrics],
              FRONT_COLUMN]
    digits = {"gbops": 4, "weight_memory_mb": 3, "compression": 1, "train_time_s": 1}
    front = set(front_groups(groups))
    rows = []
    for index, g in enumerate(groups):
        i = g.identity
        rows.append([i.method, i.model, i.dataset, g.bits_label, i.epochs,
                     *[_shown_value(g, k) for k in shown], len(g.done), len(g.runs) - len(g.done),
                     *[_fmt(g.mean(m), g.std(m) if m in SPREAD else None, digits.get(m, 2)) for m in metrics],
                     "yes" if index in front else ""])
    return _markdown(header, rows)


# The summary table's column marking the groups no other group beats in both accuracy and GBOPs.
FRONT_COLUMN = "Pareto"


def front_groups(groups: Sequence[Group]) -> list[int]:
    """Indices of the groups on the accuracy-vs-GBOPs Pareto front (mean final test accuracy against
    mean GBOPs per image; quantized and float, uniform and mixed alike), by increasing GBOPs. Groups
    of different models or data sets are not compared: the front is taken per (model, data set)."""
    by_task: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, g in enumerate(groups):
        if g.mean("test_acc") is not None and g.mean("gbops") is not None:
            by_task[(g.identity.model, g.identity.dataset)].append(index)
    front = []
    for members in by_task.values():
        points = [(groups[i].mean("gbops"), groups[i].mean("test_acc")) for i in members]
        front += [members[i] for i in pareto_front(points)]
    return front


def bits_table(groups: Sequence[Group]) -> str:
    """Final test accuracy, method (rows) x bits (columns), per model and data set."""
    shown = _varying_keys(groups)
    tables = []
    by_task: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        if not g.identity.mixed:  # no one bit width: in the runs table (and on the GBOPs plot) only
            by_task[(g.identity.model, g.identity.dataset)].append(g)
    for (model, dataset), task_groups in sorted(by_task.items()):
        columns = sorted({(g.identity.bits_w, g.identity.bits_a) for g in task_groups})
        labels = ["FP32" if c == (FLOAT_BITS, FLOAT_BITS) else f"W{c[0]}A{c[1]}" for c in columns]
        rows: dict[str, dict[tuple[int, int], str]] = defaultdict(dict)
        for g in task_groups:
            row = _label(g, shown, with_bits=False) + (f" ({g.identity.epochs} ep)" if len(
                {x.identity.epochs for x in task_groups}) > 1 else "")
            change = g.mean("vs_init")
            cell = _fmt(g.mean("test_acc"), g.std("test_acc")) + f" (n={len(g.done)}" + (
                f", {change:+.2f}" if change is not None else "") + ")"
            rows[row][(g.identity.bits_w, g.identity.bits_a)] = cell
        body = [[name, *[cells.get(c, "") for c in columns]] for name, cells in rows.items()]
        since = (", then the mean change (points) from the init_from checkpoint's accuracy"
                 if any(g.values("vs_init") for g in task_groups) else "")
        tables.append(f"Final test accuracy (%), {model} on {dataset}, mean ± std over seeds (n = runs{since}):\n\n"
                      + _markdown(["method", *labels], body))
    return "\n\n".join(tables)


# Problem rows longer than this are cut: a hand-edited record may hold any amount of text.
REASON_CHARS = 300
PROBLEMS_TITLE = "## Failed, unfinished, unreadable and duplicate runs"


def problems_table(runs: Sequence[Run], problems: Sequence[Problem] = ()) -> str:
    """One row per folder that is not a finished run counted as it is: failed and unfinished runs,
    records that do not fit and duplicates (with the reason), and finished runs with a note (events
    that could not be read); by folder."""
    rows = [(r.path, r.status, r.command_line, "; ".join(filter(None, [r.reason, *r.notes])))
            for r in runs if r.status != DONE or r.notes]
    rows += [(p.path, p.kind, p.command_line, p.reason) for p in problems]
    cells = [[status, str(path), " ".join(command_line) or "-", _cut(reason)]
             for path, status, command_line, reason in sorted(rows, key=lambda row: str(row[0]))]
    return _markdown(["status", "run", "overrides", "reason"], cells) if cells else ""


def _cut(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 3] + "..."


def write_csv(groups: Sequence[Group], path: Path) -> None:
    shown = _varying_keys(groups)
    fields = ["method", "model", "dataset", "bits_w", "bits_a", "epochs", "layer_bits", *shown, "runs", "failed",
              "seeds"]
    for metric in METRICS:
        fields += [f"{metric}_mean", f"{metric}_std"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for g in groups:
            row: dict[str, Any] = {**dataclasses.asdict(g.identity), **{k: _shown_value(g, k) for k in shown},
                                   "runs": len(g.done), "failed": len(g.runs) - len(g.done),
                                   "seeds": " ".join(str(r.seed) for r in g.done)}
            for metric in METRICS:
                row[f"{metric}_mean"], row[f"{metric}_std"] = g.mean(metric), g.std(metric)
            writer.writerow(row)


def read_curves(run_dir: Path, tags: Sequence[str] = (CURVE_TAG,)) -> dict[str, list[tuple[int, float]]]:
    """Tag -> (epoch, value) of each finite scalar in ``tags`` (empty when not logged), from one read of
    the run's TensorBoard events (TensorBoard's own reader, which also drops the steps a resumed run
    rewrote)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    logged = set(events.Tags().get("scalars", []))
    return {tag: [(e.step, e.value) for e in events.Scalars(tag) if math.isfinite(e.value)] if tag in logged else []
            for tag in tags}


def _series(groups: Sequence[Group], shown: Sequence[str]) -> dict[str, list[Group]]:
    """Groups that form one line of a plot: same method, model, data set, overrides, A/W relation and
    epochs; the name is the line's label."""
    multi_task = len({(g.identity.model, g.identity.dataset) for g in groups}) > 1
    multi_length = len({g.identity.epochs for g in groups}) > 1
    series: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        name = _label(g, shown, with_bits=False)
        if g.identity.mixed:
            name += " mixed"
        elif g.identity.bits_a != g.identity.bits_w:
            name += f" A{g.identity.bits_a}"
        if multi_task:
            name += f" ({g.identity.model}, {g.identity.dataset})"
        if multi_length:
            name += f" ({g.identity.epochs} ep)"
        series[_literal(name)].append(g)
    return series


def method_style(method: str) -> tuple[str, str]:
    """The (colour, marker) of ``method`` in every plot."""
    names = sorted(METHODS)
    if method not in names:
        return "#999999", "."
    index = names.index(method)
    return COLOURS[index % len(COLOURS)], MARKERS[index % len(MARKERS)]


def shade(colour: str, amount: float) -> str:
    """``colour`` (``#rrggbb``) mixed towards white by ``amount`` in [0, 1], or towards black by
    ``-amount``; a colour too dark to darken visibly (every channel below 64) is lightened instead."""
    channels = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    if max(channels) < 64:
        amount = abs(amount)
    target = 255 if amount > 0 else 0
    return "#" + "".join(f"{round(c + (target - c) * abs(amount)):02x}" for c in channels)


def _series_styles(series: Mapping[str, list[Group]]) -> dict[str, dict[str, Any]]:
    """matplotlib keyword arguments of each series: its method's marker, and its method's colour in a
    shade and a line style that tell apart the series of one method (SQ's three arms, say); the markers
    of a mixed-precision series are hollow (white inside), so that it never reads as a uniform one."""
    styles, seen = {}, defaultdict(int)
    for name, members in sorted(series.items()):
        method = members[0].identity.method
        colour, marker = method_style(method)
        k = seen[method]
        styles[name] = {"color": shade(colour, SHADES[k % len(SHADES)]), "marker": marker,
                        "markersize": MARKER_SIZE, "linestyle": LINE_STYLES[k % len(LINE_STYLES)]}
        if members[0].identity.mixed:
            styles[name]["markerfacecolor"] = "white"
        seen[method] += 1
    return styles


def _literal(text: str) -> str:
    """``text`` for a plot as written: an override value holding ``$`` would start matplotlib's mathtext."""
    return text.replace("$", r"\$")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) no other point beats in both, by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def dodge(xs: Sequence[float], lows: Sequence[float], highs: Sequence[float], width: float,
          widest: float = math.inf, bounds: tuple[float, float] = (-math.inf, math.inf)) -> list[float]:
    """Horizontal centres for markers drawn at ``xs``, each covering ``[lows[i], highs[i]]`` vertically
    (its marker and error bar), so that none hides another: markers whose vertical extents overlap end
    up at least ``width`` apart. Markers that would come closer form a cluster, laid out side by side
    in the order of their xs (then of their index), centred on the mean of their xs as far as
    ``bounds`` (lowest, highest centre) allow; the others keep their x. A cluster is at most ``widest``
    from its first centre to its last: a larger one is laid out closer than ``width``, its markers
    overlapping in part. All lengths in one unit (display pixels for a plot).
    """
    clusters = [[i] for i in range(len(xs))]
    positions = [float(x) for x in xs]
    while (clash := _clash(positions, lows, highs, width, clusters)) is not None:
        merged = sorted(clusters[clash[0]] + clusters[clash[1]], key=lambda i: (xs[i], i))
        step = min(width, widest / (len(merged) - 1))
        half = step * (len(merged) - 1) / 2
        centre = min(max(statistics.fmean(xs[i] for i in merged), bounds[0] + half), bounds[1] - half)
        for rank, i in enumerate(merged):
            positions[i] = centre - half + rank * step
        clusters = [c for k, c in enumerate(clusters) if k not in clash] + [merged]
    return positions


def _clash(positions: Sequence[float], lows: Sequence[float], highs: Sequence[float], width: float,
           clusters: Sequence[Sequence[int]]) -> tuple[int, int] | None:
    """The indices of two clusters holding markers that would overlap (:func:`dodge`), or None."""
    owner = {i: k for k, members in enumerate(clusters) for i in members}
    order = sorted(range(len(positions)), key=positions.__getitem__)
    for rank, i in enumerate(order):
        for j in order[rank + 1:]:
            if positions[j] - positions[i] >= width * (1 - 1e-9):  # laid-out neighbours touch, no more
                break
            if owner[i] != owner[j] and lows[i] < highs[j] and lows[j] < highs[i]:
                return owner[i], owner[j]
    return None


def _dodged_xs(ax: Any, xs: Sequence[float], ys: Sequence[float], errs: Sequence[float],
               widest: float = math.inf) -> list[float]:
    """Data x at which to draw each marker (data ``xs``, ``ys``, error bar half-lengths ``errs``, 0 for
    none) so that none hides another (:func:`dodge` in the axes' pixels, a cluster at most ``widest``
    pixels across and inside the axes; their limits and size final)."""
    import numpy as np

    pixels_per_point = ax.figure.dpi / 72
    half = MARKER_SIZE / 2 * pixels_per_point
    markers, bars = _marker_boxes(ax, xs, ys, errs, [half] * len(xs))
    placed = dodge(((markers[:, 0] + markers[:, 2]) / 2).tolist(), np.minimum(markers[:, 1], bars[:, 1]).tolist(),
                   np.maximum(markers[:, 3], bars[:, 3]).tolist(), (MARKER_SIZE + DODGE_GAP) * pixels_per_point,
                   widest, (ax.bbox.x0 + 2 * half, ax.bbox.x1 - 2 * half))
    heights = (markers[:, 1] + markers[:, 3]) / 2
    return ax.transData.inverted().transform(np.column_stack([placed, heights]).reshape(-1, 2))[:, 0].tolist()


def _draw_points(ax: Any, name: str, points: Sequence[tuple[float, float, float | None]],
                 style: Mapping[str, Any], **line: Any) -> None:
    """The markers of series ``name`` at its (x, accuracy %, std % or None) ``points``, joined as
    ``style`` says unless ``line`` overrides it, and an error bar (± the sample std over seeds) at each
    point whose group has several finished runs."""
    xs, ys, stds = zip(*points)
    ax.plot(xs, ys, label=name, **{**style, **line})
    bars = [(x, y, std) for x, y, std in points if std is not None]
    if bars:
        bar_xs, bar_ys, bar_stds = zip(*bars)
        ax.errorbar(bar_xs, bar_ys, yerr=bar_stds, fmt="none", ecolor=style["color"], elinewidth=1, capsize=CAP_SIZE,
                    label=name)


def _legend_beside(ax: Any, styles: Mapping[str, Mapping[str, Any]], names: Iterable[str],
                   extra: Sequence[tuple[Any, str]] = ()) -> None:
    """A legend right of ``ax`` (never over the data): one entry per series in ``names`` drawn in its
    style, then the (handle, label) pairs of ``extra``."""
    from matplotlib.lines import Line2D

    entries = [(Line2D([], [], **styles[name]), name) for name in names] + list(extra)
    if entries:
        handles, labels = zip(*entries)
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0,
                  ncols=math.ceil(len(entries) / LEGEND_ROWS))


def _fix_layout(fig: Any, ax: Any) -> None:
    """Lay the figure out and keep the axes' limits as they are now, so that pixel positions computed
    from here on stay where they are drawn."""
    fig.tight_layout()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())


def _mark_init_from(ax: Any, groups: Sequence[Group]) -> list[tuple[Any, str]]:
    """A dotted line at the test accuracy (%) of the net the finished runs started from
    (``init_from``), when they all started from one; its (line, label) for the legend, or none."""
    starts = {r.metrics["init_test_acc"] for g in groups for r in g.done if "init_test_acc" in r.metrics}
    if len(starts) != 1:
        return []
    start = starts.pop()
    line = ax.axhline(start, linestyle=":", linewidth=1, color="black", label=f"init_from net: {start:.2f}%")
    return [(line, line.get_label())]


def plot_accuracy_vs_bits(groups: Sequence[Group], path: Path) -> None:
    """Final test accuracy (%: mean over seeds, error bar ± std where a group has several finished
    runs) against weight bits, one line per series, float runs as dashed lines. Markers that would hide
    each other are set side by side around their bit width (:func:`dodge`); a crowded plot is widened
    until those of one bit width fit within ``BITS_SLOT`` of the gap to the next."""
    import matplotlib.pyplot as plt

    series = _series(groups, _varying_keys(groups))
    styles = _series_styles(series)
    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=DPI)
    points = []  # (series, weight bits, mean %, std % or None)
    references = []  # the legend's (line, label) of the float runs' and the init_from net's accuracies
    for name, members in sorted(series.items()):
        for g in sorted(members, key=lambda g: g.identity.bits_w):
            acc = g.mean("test_acc")
            if g.identity.mixed:  # no one bit width to place it at
                continue
            if acc is not None and g.identity.bits_w == FLOAT_BITS:
                line = ax.axhline(acc, linestyle="--", linewidth=1, color=styles[name]["color"], alpha=0.7,
                                  label=f"{name} FP32: {acc:.2f}%")
                references.append((line, line.get_label()))
            elif acc is not None:
                points.append((name, g.identity.bits_w, acc, g.std("test_acc")))
    references += _mark_init_from(ax, groups)
    bits = sorted({p[1] for p in points})
    gap = min((b - a for a, b in zip(bits, bits[1:])), default=1)
    if points:
        ax.update_datalim([(p[1], p[2] + sign * (p[3] or 0.0)) for p in points for sign in (-1, 1)])
        ax.set_xlim(bits[0] - gap * 0.6, bits[-1] + gap * 0.6)
        ax.margins(y=0.1)
        ax.autoscale_view(scalex=False)
    ax.set_xlabel("weight bits")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Accuracy vs bits")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    _legend_beside(ax, styles, sorted({p[0] for p in points}), references)
    _fix_layout(fig, ax)
    columns = ([p[1] for p in points], [p[2] for p in points], [p[3] or 0.0 for p in points])
    spread = max((abs(x - p[1]) for x, p in zip(_dodged_xs(ax, *columns), points)), default=0.0)
    if spread > BITS_SLOT * gap / 2:
        fig.set_figwidth(min(MAX_WIDTH, fig.get_figwidth() * spread / (BITS_SLOT * gap / 2)))
        _fix_layout(fig, ax)
    slot = BITS_SLOT * gap * ax.bbox.width / (ax.get_xlim()[1] - ax.get_xlim()[0])  # pixels
    xs = _dodged_xs(ax, *columns, widest=slot)
    for name in sorted({p[0] for p in points}):
        _draw_points(ax, name, [(x, p[2], p[3]) for x, p in zip(xs, points) if p[0] == name], styles[name])
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_accuracy_vs_gbops(groups: Sequence[Group], path: Path) -> None:
    """UNIQ-style: final test accuracy (%: mean over seeds, error bar ± std where a group has several
    finished runs) against GBOPs per image on a log axis; the Pareto front circled and joined. Markers
    that would hide each other are set side by side (:func:`dodge`); every point is labelled, no label
    over another or over a marker, as few as room allows over an error bar or a line
    (:func:`_place_labels`); the title counts the labels left out for want of room."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = _varying_keys(groups)
    placed = [g for g in groups if g.mean("test_acc") is not None and (g.mean("gbops") or 0) > 0]
    series = _series(placed, shown)
    styles = _series_styles(series)
    fig, ax = plt.subplots(figsize=(7.6, 5.0), dpi=DPI)
    points = [(name, g, g.mean("gbops"), g.mean("test_acc"), g.std("test_acc"))
              for name, members in sorted(series.items()) for g in members]
    ax.set_xscale("log")
    if points:
        ax.update_datalim([(p[2], p[3] + sign * (p[4] or 0.0)) for p in points for sign in (-1, 1)])
        ax.margins(x=0.1, y=0.1)  # room for the labels of the outermost points
        ax.autoscale_view()
    _plain_ticks_within_a_decade(ax.xaxis)
    ax.set_xlabel("GBOPs per image (log)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Accuracy vs compute")
    ax.grid(alpha=0.3, which="both")
    front_handle = Line2D([], [], color="black", linewidth=1, alpha=0.6, marker="o", markersize=FRONT_CIRCLE,
                          markerfacecolor="none", markeredgecolor="black")
    _legend_beside(ax, styles, sorted(series), [(front_handle, "Pareto front")] if points else [])
    _fix_layout(fig, ax)
    xs = _dodged_xs(ax, [p[2] for p in points], [p[3] for p in points], [p[4] or 0.0 for p in points],
                    widest=ax.bbox.width / 4)
    ys = [p[3] for p in points]
    for name in sorted(series):
        _draw_points(ax, name, [(x, p[3], p[4]) for x, p in zip(xs, points) if p[0] == name], styles[name],
                     linestyle="none")
    front = pareto_front([(p[2], p[3]) for p in points])
    front_xs, front_ys = [xs[i] for i in front], [ys[i] for i in front]
    ax.step(front_xs, front_ys, where="post", color="black", linewidth=1, alpha=0.6, zorder=1)  # under the bars
    ax.scatter(front_xs, front_ys, s=FRONT_CIRCLE ** 2, facecolors="none", edgecolors="black")
    radii = [(FRONT_CIRCLE if i in front else MARKER_SIZE) / 2 * fig.dpi / 72 for i, _ in enumerate(points)]
    left_out = _place_labels(ax, xs, ys, [_literal(_label(p[1], shown)) for p in points], radii,
                             *_marker_boxes(ax, xs, ys, [p[4] or 0.0 for p in points], radii),
                             _step_samples(ax, front_xs, front_ys))
    if left_out:
        ax.set_title(f"Accuracy vs compute ({left_out} of {len(points)} labels left out: no room)")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _marker_boxes(ax: Any, xs: Sequence[float], ys: Sequence[float], errs: Sequence[float],
                  radii: Sequence[float]) -> tuple[Any, Any]:
    """Boxes (pixels, [N, 4] as x0, y0, x1, y1) around each marker (``radii`` pixels, half across), and
    around each error bar (data half-lengths ``errs``, 0 for none), of the points at data ``xs``, ``ys``."""
    import numpy as np

    to_pixels = ax.transData.transform
    centres = to_pixels(np.column_stack([xs, ys]).reshape(-1, 2))
    lows = to_pixels(np.column_stack([xs, np.subtract(ys, errs)]).reshape(-1, 2))[:, 1]
    highs = to_pixels(np.column_stack([xs, np.add(ys, errs)]).reshape(-1, 2))[:, 1]
    radii = np.asarray(radii, float)
    cap = CAP_SIZE * ax.figure.dpi / 72
    return (np.column_stack([centres - radii[:, None], centres + radii[:, None]]).reshape(-1, 4),
            np.column_stack([centres[:, 0] - cap, lows, centres[:, 0] + cap, highs]).reshape(-1, 4))


def _place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], radii: Sequence[float],
                  solid: Any, thin: Any, lines: Any) -> int:
    """Label each point (data ``xs``, ``ys``; drawn ``radii`` pixels across, half) beside it, or as near
    as there is room, joined to it by a thin line: most crowded point first, each label goes to a spot
    of a grid around its point (:func:`_label_spot`) inside the axes and clear of the ``solid`` boxes
    (pixels, [N, 4] as x0, y0, x1, y1: the markers) and of the labels placed before, over as few of the
    ``thin`` boxes (error bars) and ``lines`` (pixels, [N, 2]: lines as points a few pixels apart; and
    the lines joining labels placed before) as there may be. A label with no such spot is left out:
    returns how many."""
    import numpy as np

    renderer = ax.figure.canvas.get_renderer()
    centres = ax.transData.transform(np.column_stack([xs, ys]).reshape(-1, 2))
    # A label may lie over an error bar or a line: a half-white ground keeps it legible, the line visible.
    ground = {"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0}
    texts = [ax.text(x, y, label, fontsize=LABEL_FONT, ha="left", va="bottom", bbox=ground)
             for x, y, label in zip(xs, ys, labels)]
    crowd = (np.linalg.norm(centres[:, None] - centres[None], axis=2) < CROWD * ax.figure.dpi / 72).sum(axis=1)
    solid, thin = np.asarray(solid, float).reshape(-1, 4), np.asarray(thin, float).reshape(-1, 4)
    lines = np.asarray(lines, float).reshape(-1, 2)
    left_out = 0
    for index in sorted(range(len(texts)), key=lambda i: (-crowd[i], i)):
        extent = texts[index].get_window_extent(renderer)
        box, leader = _label_spot(ax, centres[index], radii[index], (extent.width, extent.height),
                                  np.delete(centres, index, axis=0), solid, thin, lines)
        if box is None:
            texts[index].remove()
            left_out += 1
            continue
        texts[index].set_position(ax.transData.inverted().transform(box[:2]))
        # Labels side by side would read as one: a few pixels more between them across than up and down.
        solid = np.vstack([solid, box + [-LABEL_SPACE, -1, LABEL_SPACE, 1]])
        if leader is not None:
            ax.plot(*ax.transData.inverted().transform(leader).T, color="0.5", linewidth=0.5)
            lines = np.vstack([lines, np.linspace(*leader, LEADER_SAMPLES)])
    return left_out


def _label_spot(ax: Any, centre: Any, radius: float, size: tuple[float, float], others: Any, solid: Any, thin: Any,
                lines: Any) -> tuple[Any, Any]:
    """The box (pixels: x0, y0, x1, y1) of a label of ``size`` (pixels) for the point at ``centre``, and
    the line joining them ([2, 2] pixels; None when they touch); (None, None) where no spot of the grid
    is inside the axes and clear of the ``solid`` boxes (:func:`_place_labels`). Of those, the spot
    taken is the first by: its line crosses fewest solid boxes; unless joined to its point by a line, it
    is nearer to its own point than to any of the ``others`` (pixels, [N, 2]), so that it is not read as
    another point's; it and its line cross (or run along) fewest ``thin`` boxes and ``lines`` points;
    it is nearest to the point."""
    import numpy as np

    (width, height), gap = size, radius + LABEL_PAD + 1
    offsets = gap + height * np.arange(LABEL_REACH)
    reach = np.hypot(offsets[-1] + width, offsets[-1] + height) + 1  # the farthest any spot (or line) gets
    solid, thin = (boxes[_box_distances(boxes, centre[None])[:, 0] < reach] for boxes in (solid, thin))
    lines, others = (near[np.linalg.norm(near - centre, axis=1) < reach] for near in (lines, others))
    # Vertically centred and right of the point first: of spots otherwise equal, the first is taken.
    lefts = np.concatenate([centre[0] + offsets, centre[0] - offsets - width, [centre[0] - width / 2]])
    bottoms = np.concatenate([[centre[1] - height / 2], centre[1] + offsets, centre[1] - offsets - height])
    x0, y0 = (grid.ravel() for grid in np.meshgrid(lefts, bottoms))
    spots = np.column_stack([x0, y0, x0 + width, y0 + height])
    padded = spots + [-LABEL_PAD, -LABEL_PAD, LABEL_PAD, LABEL_PAD]
    distance = _box_distances(spots, centre[None])[:, 0]
    frame = ax.bbox.extents
    blocked = ((spots[:, :2] < frame[:2] + 2).any(axis=1) | (spots[:, 2:] > frame[2:] - 2).any(axis=1)
               | (distance < gap) | _overlaps(padded, solid).any(axis=1))
    if blocked.all():
        return None, None
    nearest = np.column_stack([np.clip(centre[0], x0, x0 + width), np.clip(centre[1], y0, y0 + height)])
    ends = centre + (nearest - centre) * (gap / np.maximum(distance, gap))[:, None]  # the lines leave the marker
    crossing = _crossings(ends, nearest, solid).sum(axis=1)
    joined = distance > gap + 1  # drawn with a line to its point
    ambiguous = ~joined & (_box_distances(spots, others) < distance[:, None]).any(axis=1)
    clutter = (_overlaps(padded, thin).sum(axis=1) + _inside(padded, lines).sum(axis=1)
               + _crossings(ends, nearest, thin).sum(axis=1) + _along(ends, nearest, lines).sum(axis=1))
    best = int(np.lexsort((distance, clutter, ambiguous, crossing, blocked))[0])
    leader = np.array([ends[best], nearest[best]]) if joined[best] else None
    return spots[best], leader


def _box_distances(boxes: Any, points: Any) -> Any:
    """[M, N] the distance from ``points[n]`` (x, y) to the nearest point of ``boxes[m]`` (x0, y0, x1, y1)."""
    import numpy as np

    dx = np.maximum(np.maximum(boxes[:, None, 0] - points[None, :, 0], points[None, :, 0] - boxes[:, None, 2]), 0)
    dy = np.maximum(np.maximum(boxes[:, None, 1] - points[None, :, 1], points[None, :, 1] - boxes[:, None, 3]), 0)
    return np.hypot(dx, dy)


def _crossings(starts: Any, ends: Any, boxes: Any) -> Any:
    """[M, N] whether the segment from ``starts[m]`` to ``ends[m]`` (x, y) passes through the inside of
    ``boxes[n]`` (x0, y0, x1, y1): the slab test, each axis bounding the part of the segment within the box."""
    import numpy as np

    entry, leave = np.zeros((len(starts), len(boxes))), np.ones((len(starts), len(boxes)))
    for axis in (0, 1):
        start, step = starts[:, axis, None], (ends - starts)[:, axis, None]
        low, high = boxes[None, :, axis], boxes[None, :, axis + 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            first, second = (low - start) / step, (high - start) / step
        parallel = step == 0  # inside the slab throughout, or never
        within = (start > low) & (start < high)
        entry = np.maximum(entry, np.where(parallel, np.where(within, 0.0, np.inf), np.minimum(first, second)))
        leave = np.minimum(leave, np.where(parallel, np.where(within, 1.0, -np.inf), np.maximum(first, second)))
    return entry < leave


def _along(starts: Any, ends: Any, points: Any) -> Any:
    """[M, N] whether ``points[n]`` lies within ``LABEL_PAD`` (pixels) of the segment from ``starts[m]`` to
    ``ends[m]`` (x, y): a line joining a label that would run along (or across) another line."""
    import numpy as np

    step = (ends - starts)[:, None]
    length = np.maximum((step ** 2).sum(axis=2), 1e-12)
    share = np.clip(((points[None] - starts[:, None]) * step).sum(axis=2) / length, 0, 1)
    return np.linalg.norm(starts[:, None] + share[..., None] * step - points[None], axis=2) < LABEL_PAD


def _overlaps(a: Any, b: Any) -> Any:
    """[M, N] whether box ``a[m]`` and box ``b[n]`` overlap (x0, y0, x1, y1 each)."""
    return ((a[:, None, 0] < b[None, :, 2]) & (a[:, None, 2] > b[None, :, 0])
            & (a[:, None, 1] < b[None, :, 3]) & (a[:, None, 3] > b[None, :, 1]))


def _inside(boxes: Any, points: Any) -> Any:
    """[M, N] whether ``points[n]`` (x, y) lies inside ``boxes[m]`` (x0, y0, x1, y1)."""
    return ((points[None, :, 0] > boxes[:, None, 0]) & (points[None, :, 0] < boxes[:, None, 2])
            & (points[None, :, 1] > boxes[:, None, 1]) & (points[None, :, 1] < boxes[:, None, 3]))


def _step_samples(ax: Any, xs: Sequence[float], ys: Sequence[float]) -> Any:
    """Points (pixels, [N, 2]) a few pixels apart along the steps drawn through data (``xs``, ``ys``)
    with ``where="post"``."""
    import numpy as np

    corners = []
    for k, (x, y) in enumerate(zip(xs, ys)):
        if k:
            corners.append((x, ys[k - 1]))
        corners.append((x, y))
    pixels = ax.transData.transform(np.array(corners, float).reshape(-1, 2))
    return np.concatenate([pixels[:1]] + [np.linspace(a, b, max(2, int(np.hypot(*(b - a)) / 4)))[1:]
                                          for a, b in zip(pixels, pixels[1:])])


def _plain_ticks_within_a_decade(axis: Any) -> None:
    """Tick a log axis that spans less than a decade at a few round numbers written plainly.

    Matplotlib labels every minor tick there in scientific notation (``1.1x10^0``, ...), and the
    labels run into each other; over a decade or more its decade labels are kept.
    """
    from matplotlib import ticker

    low, high = sorted(axis.get_view_interval())
    if low > 0 and high / low < 10:
        axis.set_major_locator(ticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axis.set_minor_locator(ticker.NullLocator())


def _by_epoch(group: Group) -> dict[str, dict[int, list[float]]]:
    """Tag (of ``CURVE_TAGS``) -> epoch -> the values of that scalar the group's finished runs logged
    at that epoch."""
    by_epoch: dict[str, dict[int, list[float]]] = {tag: defaultdict(list) for tag in CURVE_TAGS}
    for run in group.done:
        for tag, curve in run.curves.items():
            for epoch, value in curve:
                by_epoch[tag][epoch].append(value)
    return by_epoch


def epochs_table(groups: Sequence[Group], epochs: Sequence[int]) -> str:
    """Test accuracy (%) of each group at the given epochs: mean ± std over its finished runs, the
    mean train accuracy (%) in brackets; ``-`` where none of them logged that epoch."""
    shown = _varying_keys(groups)
    multi_task = len({(g.identity.model, g.identity.dataset) for g in groups}) > 1
    multi_length = len({g.identity.epochs for g in groups}) > 1
    rows = []
    for g in groups:
        name = _label(g, shown) + (f" ({g.identity.model}, {g.identity.dataset})" if multi_task else "")
        name += f" ({g.identity.epochs} ep)" if multi_length else ""
        curves = _by_epoch(g)
        test, train = curves[CURVE_TAG], curves[TRAIN_CURVE_TAG]
        cells = []
        for epoch in epochs:
            values = test.get(epoch)
            if not values:
                cells.append("-")
                continue
            cell = _fmt(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)
            cells.append(cell + (f" ({statistics.fmean(train[epoch]):.2f})" if train.get(epoch) else ""))
        rows.append([name, *cells])
    return _markdown(["test % (train %) at epoch", *[str(e) for e in epochs]], rows)


# A baseline as --paired names it: (key, value) pairs, key ``method`` or an override key.
Selector = tuple[tuple[str, str], ...]


def _alike(group: Group, baseline: Group, selector: Selector) -> bool:
    """Whether ``baseline`` agrees with ``group`` in every field but the selector's keys (and the
    epochs, compared apart; and the bits, where the baseline is float). A ``method.<option>`` that
    either group's method does not read is no difference (:func:`_reads`); nor is another key only
    one of them has where that one left it at its default (read from its config)."""
    keys = {key for key, _ in selector}
    a, b = group.identity, baseline.identity
    if (a.dataset, a.model) != (b.dataset, b.model) or ("method" not in keys and a.method != b.method):
        return False
    if not b.is_float and (a.bits_w, a.bits_a, a.layer_bits) != (b.bits_w, b.bits_a, b.layer_bits):
        return False
    differing = [key for key in (group.extras.keys() | baseline.extras.keys()) - keys
                 if _reads(a.method, key) and _reads(b.method, key)
                 and group.extras.get(key) != baseline.extras.get(key)]
    if not differing:
        return True
    mine_default, theirs_default = group.defaults, baseline.defaults  # each read from the runs once
    return all(key not in group.extras and key in theirs_default or key not in baseline.extras and key in mine_default
               for key in differing)


def _key_value(group: Group, key: str) -> str:
    return group.identity.method if key == "method" else group.extras.get(key, "")


def _selects(group: Group, selector: Selector) -> bool:
    return all(_key_value(group, key) == canonical(value) for key, value in selector)


def _baseline(group: Group, baselines: Sequence[Group], selector: Selector) -> tuple[Group | None, str]:
    """The group ``group`` is compared with (see the module's ``--paired``), or None and why: its method
    lacks an option the selector names (unless the selector names a method that has it), or no
    baseline, or several that neither their bits (one at the group's bits before a float one) nor their
    epochs tell apart."""
    named = dict(selector).get("method")  # a baseline method's own option is part of that method
    ignored = [key for key, _ in selector
               if not _reads(group.identity.method, key) and (named is None or not _reads(named, key))]
    if ignored:
        return None, f"{group.identity.method} has no option {ignored[0]}"
    matches = [b for b in baselines if _alike(group, b, selector)]
    for prefer in (lambda b: b.bits_label == group.bits_label, lambda b: b.identity.epochs == group.identity.epochs):
        if len(matches) > 1 and any(prefer(b) for b in matches):
            matches = [b for b in matches if prefer(b)]
    if len(matches) == 1:
        return matches[0], ""
    if not matches:
        return None, "no baseline alike in everything else"
    return None, "several baselines: " + "; ".join(f"{b.identity.method} {b.bits_label} ({b.identity.epochs} ep)"
                                                   + "".join(f" {k}={v}" for k, v in sorted(b.extras.items()))
                                                   for b in matches)


def _selector_text(selector: Selector) -> str:
    return " ".join(f"{key}={value}" for key, value in selector)


def _accuracy_by_seed(group: Group) -> tuple[dict[int, float], list[int]]:
    """Seed -> final test accuracy (%) of the group's finished runs, and the seeds finished twice
    (the same run in two folders given together), which cannot be paired."""
    by_seed: dict[int, float] = {}
    twice = []
    for run in group.done:
        if run.seed in by_seed:
            twice.append(run.seed)
        by_seed[run.seed] = run.metrics["test_acc"]
    return by_seed, sorted(set(twice))


def paired_table(groups: Sequence[Group], selector: Selector) -> str:
    """Each group beside its baseline (the group ``selector`` names, everything else alike; both named
    with their epochs where these differ): final test accuracy difference (points) of the runs paired
    by seed, mean ± sample std over the seeds both finished, each seed's difference, and in how many
    seeds the group is above; then the groups left unpaired and why."""
    shown = _varying_keys(groups)
    baselines = [g for g in groups if _selects(g, selector)]
    rows, unpaired = [], []
    for g in groups:
        if _selects(g, selector):
            continue
        base, why = _baseline(g, baselines, selector)
        if base is not None:
            (ours, twice), (theirs, twice_base) = _accuracy_by_seed(g), _accuracy_by_seed(base)
            seeds = sorted(set(ours) & set(theirs))
            if twice:
                why = f"seed {twice[0]} finished twice"
            elif twice_base:
                why = f"its baseline's seed {twice_base[0]} finished twice"
            elif not seeds:
                why = "no seed in common with its baseline"
        if why:
            unpaired.append(f"{_label(g, shown)} ({why})")
            continue
        diffs = [ours[seed] - theirs[seed] for seed in seeds]
        spread = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
        lengths = g.identity.epochs != base.identity.epochs
        names = [_label(x, shown) + f" ({x.identity.epochs} ep)" * lengths for x in (g, base)]
        rows.append([*names, len(seeds), f"{statistics.fmean(diffs):+.2f}{spread}",
                     ", ".join(f"{d:+.2f}" for d in diffs), f"{sum(d > 0 for d in diffs)} of {len(diffs)}",
                     " ".join(str(seed) for seed in seeds)])
    parts = [_markdown(["group", "baseline", "paired seeds", "difference (points)", "per seed", "above", "seeds"], rows)
             if rows else f"No group has a baseline with {_selector_text(selector)} and a seed in common."]
    if unpaired:
        parts.append("Not paired: " + "; ".join(unpaired) + ".")
    return "\n\n".join(parts)


def plot_test_curves(groups: Sequence[Group], path: Path) -> None:
    """Mean test accuracy (%) per epoch of each group (band: ± std over seeds), one panel per bit width
    with the series overlaid in the styles of the other plots, every panel on the same axes; one
    legend, right of the panels."""
    import matplotlib.pyplot as plt

    series = _series(groups, _varying_keys(groups))
    styles = _series_styles(series)
    widths = sorted({(g.identity.bits_w, g.identity.bits_a) for g in groups})
    columns = min(3, max(1, len(widths)))
    rows = math.ceil(len(widths) / columns) if widths else 1
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns + 1.8, 3.2 * rows), squeeze=False, sharex=True,
                             sharey=True, dpi=DPI)
    drawn, references = set(), {}
    for ax, bits in zip(axes.flat, widths):
        members = [g for g in groups if (g.identity.bits_w, g.identity.bits_a) == bits]
        for name, of_series in sorted(series.items()):
            for g in of_series:
                if (g.identity.bits_w, g.identity.bits_a) == bits and _draw_curve(ax, name, g, styles[name]):
                    drawn.add(name)
        references.update((label, line) for line, label in _mark_init_from(ax, members))
        ax.set_title(members[0].bits_label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(widths):]:
        ax.set_visible(False)
    _legend_beside(axes[0, -1], styles, sorted(drawn), [(line, label) for label, line in references.items()])
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _draw_curve(ax: Any, name: str, group: Group, style: Mapping[str, Any]) -> bool:
    """The mean test accuracy (%) per epoch of ``group`` (of series ``name``), a band of ± the std over
    its runs; False when no run logged any."""
    by_epoch = _by_epoch(group)[CURVE_TAG]
    if not by_epoch:
        return False
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    ax.plot(epochs, means, label=name,
            **{**style, "marker": style["marker"] if len(epochs) < 30 else None, "markersize": 4})
    ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                    color=style["color"], alpha=0.15)
    return True


PLOTS = {"accuracy_vs_bits.png": plot_accuracy_vs_bits, "accuracy_vs_gbops.png": plot_accuracy_vs_gbops,
         "test_accuracy_curves.png": plot_test_curves}


def build_report(paths: Sequence[Path], out_dir: Path, plots: bool = True, ignore: Collection[str] = (),
                 epochs: Sequence[int] = (), paired: Sequence[Selector] = ()) -> str:
    """Read the runs under ``paths``, write report.md, report.csv and the PNGs into ``out_dir``;
    returns the report's text. Runs differing only in their seed and the override keys in
    ``ignore`` are one group; ``epochs`` (1-based) adds the table of test accuracy at those epochs;
    each selector of ``paired`` the table of paired differences from the baselines it names."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed on clusters and CI
    runs, problems = find_runs(paths)
    keys = sorted({key for run in runs for key in run.overrides})
    for key in ignore:
        if key not in keys:
            raise QnnrunError(f"--ignore {key}: no run sets it; the keys the runs set are {', '.join(keys) or 'none'}")
    groups = group_runs(runs, ignore)
    finished = [g for g in groups if g.done]
    unfinished = sum(r.status == UNFINISHED for r in runs)
    waiting = {selector: _check_baseline(groups, selector, keys, ignore, unfinished) for selector in paired}
    parts = [_headline(paths, runs, problems, groups, ignore), layer_policy_note(finished)]
    if groups:
        by_bits = bits_table(groups)  # empty where every group is mixed (no one bit width)
        parts += ["## Runs, mean ± std over seeds\n\n" + summary_table(groups)]
        parts += ["## By bits\n\n" + by_bits] if by_bits else []
    if epochs and finished:
        parts.append("## By epoch\n\n" + epochs_table(finished, epochs))
    for selector in paired:
        parts.append(f"## Paired with {_selector_text(selector)}, by seed\n\n"
                     + (waiting[selector] or paired_table(finished, selector)))
    check_output_folder(out_dir, "--out")
    write_csv(groups, out_dir / "report.csv")
    if plots and finished:
        for name, plot in PLOTS.items():
            plot(finished, out_dir / name)
    # Last: reading the curves (epochs table, plots) may have added notes about unreadable events.
    table = problems_table(runs, problems)
    if table:
        parts.append(f"{PROBLEMS_TITLE}\n\n{table}")
    if plots and finished:
        parts.append("## Plots\n\n" + "\n".join(f"![{name}]({name})" for name in PLOTS))
    # Folder names that are not UTF-8 (surrogates in str(path)) are written as escapes, not refused.
    text = ("\n\n".join(filter(None, parts)) + "\n").encode("utf-8", "backslashreplace").decode("utf-8")
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    return text


def _waiting(unfinished: int) -> str:
    return (f"{unfinished} {'run is' if unfinished == 1 else 'runs are'} unfinished "
            "(a baseline among them pairs once it finishes)")


def _check_baseline(groups: Sequence[Group], selector: Selector, keys: Sequence[str], ignore: Collection[str],
                    unfinished: int = 0) -> str:
    """One line naming what is wrong with a ``--paired`` baseline: a key given to ``--ignore``, a key no
    run sets (or only runs of methods without that option), a value no group has, or values no one
    group has together. Where ``unfinished`` runs could still be that baseline (a sweep in progress),
    the last two are no error: returns the note the report prints in place of the table ("" when the
    baseline is there)."""
    for key, value in selector:
        if key in ignore:
            raise QnnrunError(f"--paired {key}={value}: {key} is given to --ignore too, so no group differs in it")
        if key != "method" and key not in keys:
            raise QnnrunError(f"--paired {key}={value}: no run sets {key}; valid keys are method"
                              + "".join(f", {k}" for k in keys if k not in ignore))
        methods = [] if key == "method" or any(key in g.extras for g in groups) else sorted(
            {r.identity.method for g in groups for r in g.runs if key in r.overrides})
        if methods:
            raise QnnrunError(f"--paired {key}={value}: only runs of {', '.join(methods)} set {key}, and "
                              f"{'that method has' if len(methods) == 1 else 'those methods have'} no such option")
        values = sorted({_key_value(g, key) for g in groups} - {""})
        if canonical(value) not in values:
            missing = f"no group has {key}={value}; the runs have {', '.join(values) or 'none'}"
            if unfinished:
                return f"Not paired yet: {missing}, and {_waiting(unfinished)}."
            raise QnnrunError(f"--paired {key}={value}: {missing}")
    if not any(_selects(g, selector) for g in groups):
        if unfinished:
            return f"Not paired yet: no group has {_selector_text(selector)} together, and {_waiting(unfinished)}."
        raise QnnrunError(f"--paired {_selector_text(selector)}: no group has all of these")
    return ""


def _headline(paths: Sequence[Path], runs: Sequence[Run], problems: Sequence[Problem], groups: Sequence[Group],
              ignore: Collection[str]) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in (DONE, FAILED, UNFINISHED)}
    duplicates, invalid = (sum(p.kind == kind for p in problems) for kind in (DUPLICATE, INVALID))
    not_runs = (f"; {duplicates} duplicate records (each counted once, as the run it repeats)" * bool(duplicates)
                + f"; {invalid} unreadable records" * bool(invalid))
    return (f"# qnnrun report\n\n{len(runs)} runs under {', '.join(str(p) for p in paths)}: "
            f"{counts[DONE]} done, {counts[FAILED]} failed, {counts[UNFINISHED]} unfinished{not_runs}; "
            f"{len(groups)} group{'' if len(groups) == 1 else 's'} (runs that differ only in their seed"
            + "".join(f", {key}" for key in ignore) + ").")


def _epoch_list(text: str) -> list[int]:
    """``"1,10,30"`` -> ``[1, 10, 30]``; anything but positive integers is an argparse error."""
    try:
        epochs = [int(part) for part in text.split(",")]
    except ValueError:
        epochs = []
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected epoch numbers (from 1) separated by commas, e.g. 1,10,30")
    return epochs


def _selector(text: str) -> Selector:
    """``"method=ste"`` -> ``(("method", "ste"),)``; several pairs apart by spaces name a baseline by
    all of them; anything else is an argparse error."""
    pairs = [item.partition("=") for item in text.split()]
    if not pairs or not all(sep and key and value for key, sep, value in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. method=ste or grid_point=plain, "
                                         "or several apart by spaces")
    return tuple((key, value) for key, _, value in pairs)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one QnnrunError line, like every other qnnrun command's."""

    def error(self, message: str) -> NoReturn:
        raise QnnrunError(f"{message} (qnnrun report --help)")


def main(argv: Sequence[str]) -> None:
    """``qnnrun report PATH... [--out DIR] [--no-plots] [--ignore KEY] [--epochs LIST] [--paired KEY=VALUE]``."""
    parser = _Parser(
        prog="qnnrun report",
        description="Tables and plots across runs: reads every run folder under PATH (summary.json and "
                    "TensorBoard events), groups runs that differ only in their seed, and reports mean ± std "
                    "and run counts of final test accuracy, GBOPs, weight size and train time. Writes "
                    "report.md, report.csv, accuracy_vs_bits.png, accuracy_vs_gbops.png and "
                    "test_accuracy_curves.png; prints the tables. Failed, unfinished, unreadable and "
                    "duplicate runs are listed with the reason.",
        epilog="examples: qnnrun report outputs/multirun/2026-11-22/12-00-00 | qnnrun report outputs/a outputs/b "
               "--out cmp/ | qnnrun report outputs/2026-11-22/10-00-00 (one run) | "
               "qnnrun report runs/ --ignore init_from | qnnrun report runs/nbn_w3_s* --paired method=ste")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="a run folder, a sweep folder, or any folder above runs (e.g. outputs/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where report.md/.csv/.png go (default: PATH when one is given, else ./report)")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY",
                        help="an override key to group over like the seed, e.g. init_from when each seed "
                             "fine-tunes its own float run (repeatable)")
    parser.add_argument("--epochs", type=_epoch_list, default=(), metavar="LIST",
                        help="also tabulate test accuracy (train accuracy in brackets) at these epochs, "
                             "comma-separated, e.g. 1,10,20,30")
    parser.add_argument("--paired", type=_selector, action="append", default=[], metavar="KEY=VALUE",
                        help="also tabulate each group's difference from its baseline (KEY, method or an "
                             "override key, at VALUE; all else alike), paired by seed (repeatable; "
                             "several pairs in quotes, apart by spaces, name a baseline by all of them)")
    args = parser.parse_args(list(argv))
    out_dir = args.out or (args.paths[0] if len(args.paths) == 1 else Path("report"))
    text = build_report(args.paths, out_dir, plots=not args.no_plots, ignore=args.ignore, epochs=args.epochs,
                        paired=args.paired)
    print(text, end="")
    print(f"\nwritten: {out_dir / 'report.md'}, {out_dir / 'report.csv'}"
          + ("" if args.no_plots else f" and the plots in {out_dir}"))
