"""``qnnrun report PATH...``: one table and three plots across runs.

A run is a folder holding ``summary.json`` (written by the engine when a run is done, or by
:mod:`qnnrun.sweep` when it failed) or, for a run cut off before it finished, ``last.ckpt`` /
TensorBoard events without one. Runs are grouped by everything but the seed: method, model, data
set, weight and activation bits, epochs and every other key set on the command line
(``.hydra/overrides.yaml``), except the keys given to ``--ignore`` (e.g. ``init_from`` when each
seed fine-tunes its own float run). Each group reports mean and sample standard deviation over its
finished runs; runs that started from a trained net (``init_from``) also the change in final test
accuracy from that net's (``vs init_from``, points: what quantization cost).

Every folder is read once, by :func:`read_folder`, into either a :class:`Run` whose values have
their types and ranges (an :class:`Identity` of names and integers, metrics that are finite numbers
in their range) or a :class:`Problem` naming what did not fit: unreadable or hand-edited records, and
duplicate records (a sweep job that repeated an earlier job's run points at it with ``same_as``; the
run counts once, there). Tables, grouping, sorting and plots only ever see validated values.

Writes into the output folder::

    report.md                 the tables (also printed), failed, unfinished, unreadable and duplicate
                              runs with the reason (unfinished: the last epoch logged and its test
                              accuracy); with ``--epochs 1,10,30`` also test (and train) accuracy at
                              those epochs
    report.csv                one row per group: counts, mean and std of every metric
    accuracy_vs_bits.png      final test accuracy (%) against weight bits, one line per method
    accuracy_vs_gbops.png     final test accuracy (%) against GBOPs per image (log x), Pareto front marked
    test_accuracy_curves.png  test accuracy (%) per epoch from the TensorBoard events, one panel per bit width (shared axes), methods overlaid

The bits plot and the curves mark the init_from net's accuracy (dotted) when every run started from one.
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
from qnnrun.errors import QnnrunError
from qnnrun.methods import METHODS
from qnnrun.quant.convert import FLOAT_BITS
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
NOT_GROUPED = {"seed", "method", "model", "dataset", "bits", "bits.w", "bits.a", "trainer.epochs"}
CURVE_TAG = "test/acc"
TRAIN_CURVE_TAG = "train/acc"
CURVE_TAGS = (CURVE_TAG, TRAIN_CURVE_TAG)  # what Run.curves reads
# One colour and one marker per method qnnrun knows, in every plot of every report (two reports
# agree); a method not known here is drawn grey. Series of one method in a plot differ by line style.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#843c39")
MARKERS = "os^Dv<>PX*hpd"
LINE_STYLES = ("-", "--", ":", "-.")
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

    @property
    def bits_label(self) -> str:
        return "FP32" if self.bits_w == self.bits_a == FLOAT_BITS else f"W{self.bits_w}A{self.bits_a}"


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
                    epochs=_integer(record, "epochs", 0 if done else -math.inf))


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
    """``key=value`` override lines -> {key: value} without the grouping-neutral keys."""
    parsed = {}
    for line in lines:
        key, sep, value = line.partition("=")
        key = key.lstrip("+~")
        if sep and key not in NOT_GROUPED and not is_free(key) and not key.startswith("hydra"):
            parsed[key] = value
    return parsed


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
    return Run(folder, DONE, metrics, _parse_overrides(lines), lines, identity=identity, seed=seed)


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


def _planned_epochs(run: Run) -> str:
    """``" of 30"`` from the run's ``.hydra/config.yaml``; empty (with a note when unreadable) if unknown."""
    file = run.path / CONFIG_FILE
    if not _present(file):
        return ""
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UNREADABLE as error:
        run.notes.append(f"{CONFIG_FILE}: unreadable ({_error_line(error)})")
        return ""
    trainer = config.get("trainer") if isinstance(config, dict) else None
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


def group_runs(runs: Sequence[Run], ignore: Collection[str] = ()) -> list[Group]:
    """Runs with a known identity, grouped by it and by their other overrides (seed and the override
    keys in ``ignore`` aside), in the order of their identities and overrides."""
    groups: dict[tuple[Identity, tuple[tuple[str, str], ...]], Group] = {}
    for run in runs:
        if run.identity is None:
            continue
        extras = {k: v for k, v in run.overrides.items() if k not in ignore}
        key = (run.identity, tuple(sorted(extras.items())))
        groups.setdefault(key, Group(run.identity, extras)).runs.append(run)
    return [groups[key] for key in sorted(groups)]


def _varying_keys(groups: Sequence[Group]) -> list[str]:
    """Override keys whose value is not the same in every group: the columns worth showing."""
    keys = sorted({k for g in groups for k in g.extras})
    return [k for k in keys if len({g.extras.get(k, "") for g in groups}) > 1]


def _label(group: Group, shown: Sequence[str], with_bits: bool = True) -> str:
    parts = [group.identity.method]
    if with_bits:
        parts.append(group.bits_label)
    parts += [f"{k}={group.extras[k]}" for k in shown if k in group.extras]
    return " ".join(parts)


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
    header = ["method", "model", "dataset", "bits", "epochs", *shown, "runs", "failed", *[METRICS[m] for m in metrics]]
    digits = {"gbops": 4, "weight_memory_mb": 3, "compression": 1, "train_time_s": 1}
    rows = []
    for g in groups:
        i = g.identity
        rows.append([i.method, i.model, i.dataset, g.bits_label, i.epochs,
                     *[g.extras.get(k, "") for k in shown], len(g.done), len(g.runs) - len(g.done),
                     *[_fmt(g.mean(m), g.std(m) if m in SPREAD else None, digits.get(m, 2)) for m in metrics]])
    return _markdown(header, rows)


def bits_table(groups: Sequence[Group]) -> str:
    """Final test accuracy, method (rows) x bits (columns), per model and data set."""
    shown = _varying_keys(groups)
    tables = []
    by_task: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
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
    fields = ["method", "model", "dataset", "bits_w", "bits_a", "epochs", *shown, "runs", "failed", "seeds"]
    for metric in METRICS:
        fields += [f"{metric}_mean", f"{metric}_std"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for g in groups:
            row: dict[str, Any] = {**dataclasses.asdict(g.identity), **{k: g.extras.get(k, "") for k in shown},
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
    """Groups that form one line of a plot: same method, model, data set, overrides and A/W relation."""
    multi_task = len({(g.identity.model, g.identity.dataset) for g in groups}) > 1
    series: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        name = _label(g, shown, with_bits=False)
        if g.identity.bits_a != g.identity.bits_w:
            name += f" A{g.identity.bits_a}"
        if multi_task:
            name += f" ({g.identity.model}, {g.identity.dataset})"
        series[_literal(name)].append(g)
    return series


def method_style(method: str) -> tuple[str, str]:
    """The (colour, marker) of ``method`` in every plot."""
    names = sorted(METHODS)
    if method not in names:
        return "#999999", "."
    index = names.index(method)
    return COLOURS[index % len(COLOURS)], MARKERS[index % len(MARKERS)]


def _series_styles(series: Mapping[str, list[Group]]) -> dict[str, dict[str, str]]:
    """matplotlib keyword arguments of each series: its method's colour and marker, and a line style
    that tells apart the series of one method."""
    styles, seen = {}, defaultdict(int)
    for name, members in sorted(series.items()):
        method = members[0].identity.method
        colour, marker = method_style(method)
        styles[name] = {"color": colour, "marker": marker, "linestyle": LINE_STYLES[seen[method] % len(LINE_STYLES)]}
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


def _mark_init_from(ax: Any, groups: Sequence[Group]) -> None:
    """A dotted line at the test accuracy (%) of the net the finished runs started from
    (``init_from``), when they all started from one."""
    starts = {r.metrics["init_test_acc"] for g in groups for r in g.done if "init_test_acc" in r.metrics}
    if len(starts) == 1:
        start = starts.pop()
        ax.axhline(start, linestyle=":", linewidth=1, color="black")
        ax.annotate(f"init_from net: {start:.2f}%", (0.99, start), xycoords=("axes fraction", "data"), fontsize=7,
                    ha="right", va="bottom")


def plot_accuracy_vs_bits(groups: Sequence[Group], path: Path) -> None:
    import matplotlib.pyplot as plt

    shown = _varying_keys(groups)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series = _series(groups, shown)
    styles = _series_styles(series)
    for name, members in sorted(series.items()):
        points = sorted((g.identity.bits_w, g.mean("test_acc"), g.std("test_acc") or 0.0)
                        for g in members if g.mean("test_acc") is not None)
        quantized = [p for p in points if p[0] != FLOAT_BITS]
        for _, acc, _ in [p for p in points if p[0] == FLOAT_BITS]:
            ax.axhline(acc, linestyle="--", linewidth=1, color="gray")
            ax.annotate(f"{name} FP32", (0.01, acc), xycoords=("axes fraction", "data"), fontsize=7,
                        va="bottom", color="gray")
        if quantized:
            xs, ys, errs = zip(*quantized)
            ax.errorbar(xs, ys, yerr=errs, capsize=3, label=name, **styles[name])
    ax.margins(y=0.1)
    _mark_init_from(ax, groups)
    ax.set_xlabel("weight bits")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Accuracy vs bits")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_gbops(groups: Sequence[Group], path: Path) -> None:
    """UNIQ-style: accuracy against GBOPs per image on a log axis, the Pareto front joined."""
    import matplotlib.pyplot as plt

    shown = _varying_keys(groups)
    placed = [g for g in groups if g.mean("test_acc") is not None and (g.mean("gbops") or 0) > 0]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series = _series(placed, shown)
    styles = _series_styles(series)
    for name, members in sorted(series.items()):
        xs = [g.mean("gbops") for g in members]
        ys = [g.mean("test_acc") for g in members]
        errs = [g.std("test_acc") or 0.0 for g in members]
        ax.errorbar(xs, ys, yerr=errs, capsize=3, label=name, **{**styles[name], "linestyle": "none"})
        for g, x, y in zip(members, xs, ys):
            ax.annotate(_literal(_label(g, shown)), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6)
    points = [(g.mean("gbops"), g.mean("test_acc")) for g in placed]
    front = [points[i] for i in pareto_front(points)]
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=1,
                alpha=0.6, label="Pareto front")
        ax.scatter([p[0] for p in front], [p[1] for p in front], s=140, facecolors="none", edgecolors="black")
    ax.set_xscale("log")
    ax.margins(x=0.1, y=0.1)  # room for the labels of the outermost points
    _plain_ticks_within_a_decade(ax.xaxis)
    ax.set_xlabel("GBOPs per image (log)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("Accuracy vs compute")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def plot_test_curves(groups: Sequence[Group], path: Path) -> None:
    """Mean test accuracy per epoch of each group (band: ± std over seeds), one panel per bit width
    with the methods overlaid in their colours, every panel on the same axes."""
    import matplotlib.pyplot as plt

    shown = _varying_keys(groups)
    widths = sorted({(g.identity.bits_w, g.identity.bits_a) for g in groups})
    columns = min(3, max(1, len(widths)))
    rows = math.ceil(len(widths) / columns) if widths else 1
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False, sharex=True,
                             sharey=True)
    for ax, bits in zip(axes.flat, widths):
        members = [g for g in groups if (g.identity.bits_w, g.identity.bits_a) == bits]
        series = {_literal(_label(g, shown, with_bits=False)): [g] for g in members}
        styles = _series_styles(series)
        for name, (g,) in sorted(series.items()):
            by_epoch = _by_epoch(g)[CURVE_TAG]
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            means = [statistics.fmean(by_epoch[e]) for e in epochs]
            stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
            style = {**styles[name], "marker": styles[name]["marker"] if len(epochs) < 30 else None}
            ax.plot(epochs, means, label=name, markersize=4, **style)
            ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=style["color"], alpha=0.15)
        _mark_init_from(ax, members)
        ax.set_title(members[0].bits_label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(widths):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PLOTS = {"accuracy_vs_bits.png": plot_accuracy_vs_bits, "accuracy_vs_gbops.png": plot_accuracy_vs_gbops,
         "test_accuracy_curves.png": plot_test_curves}


def build_report(paths: Sequence[Path], out_dir: Path, plots: bool = True, ignore: Collection[str] = (),
                 epochs: Sequence[int] = ()) -> str:
    """Read the runs under ``paths``, write report.md, report.csv and the PNGs into ``out_dir``;
    returns the report's text. Runs differing only in their seed and the override keys in
    ``ignore`` are one group; ``epochs`` (1-based) adds the table of test accuracy at those epochs."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed on clusters and CI
    runs, problems = find_runs(paths)
    keys = sorted({key for run in runs for key in run.overrides})
    for key in ignore:
        if key not in keys:
            raise QnnrunError(f"--ignore {key}: no run sets it; the keys the runs set are {', '.join(keys) or 'none'}")
    groups = group_runs(runs, ignore)
    finished = [g for g in groups if g.done]
    parts = [_headline(paths, runs, problems, groups, ignore)]
    if groups:
        parts += ["## Runs, mean ± std over seeds\n\n" + summary_table(groups), "## By bits\n\n" + bits_table(groups)]
    if epochs and finished:
        parts.append("## By epoch\n\n" + epochs_table(finished, epochs))
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
    text = ("\n\n".join(parts) + "\n").encode("utf-8", "backslashreplace").decode("utf-8")
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    return text


def _headline(paths: Sequence[Path], runs: Sequence[Run], problems: Sequence[Problem], groups: Sequence[Group],
              ignore: Collection[str]) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in (DONE, FAILED, UNFINISHED)}
    duplicates, invalid = (sum(p.kind == kind for p in problems) for kind in (DUPLICATE, INVALID))
    not_runs = (f"; {duplicates} duplicate records (each counted once, as the run it repeats)" * bool(duplicates)
                + f"; {invalid} unreadable records" * bool(invalid))
    return (f"# qnnrun report\n\n{len(runs)} runs under {', '.join(str(p) for p in paths)}: "
            f"{counts[DONE]} done, {counts[FAILED]} failed, {counts[UNFINISHED]} unfinished{not_runs}; "
            f"{len(groups)} groups (runs that differ only in their seed" + "".join(f", {key}" for key in ignore) + ").")


def _epoch_list(text: str) -> list[int]:
    """``"1,10,30"`` -> ``[1, 10, 30]``; anything but positive integers is an argparse error."""
    try:
        epochs = [int(part) for part in text.split(",")]
    except ValueError:
        epochs = []
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected epoch numbers (from 1) separated by commas, e.g. 1,10,30")
    return epochs


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one QnnrunError line, like every other qnnrun command's."""

    def error(self, message: str) -> NoReturn:
        raise QnnrunError(f"{message} (qnnrun report --help)")


def main(argv: Sequence[str]) -> None:
    """``qnnrun report PATH... [--out DIR] [--no-plots] [--ignore KEY] [--epochs LIST]``."""
    parser = _Parser(
        prog="qnnrun report",
        description="Tables and plots across runs: reads every run folder under PATH (summary.json and "
                    "TensorBoard events), groups runs that differ only in their seed, and reports mean ± std "
                    "and run counts of final test accuracy, GBOPs, weight size and train time. Writes "
                    "report.md, report.csv, accuracy_vs_bits.png, accuracy_vs_gbops.png and "
                    "test_accuracy_curves.png; prints the tables. Failed, unfinished, unreadable and "
                    "duplicate runs are listed with the reason.",
        epilog="examples: qnnrun report outputs/multirun/2026-11-22/12-00-00 | qnnrun report outputs/a outputs/b "
               "--out cmp/ | qnnrun report outputs/2026-11-22/10-00-00 (one run) | qnnrun report runs/ --ignore init_from")
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
    args = parser.parse_args(list(argv))
    out_dir = args.out or (args.paths[0] if len(args.paths) == 1 else Path("report"))
    text = build_report(args.paths, out_dir, plots=not args.no_plots, ignore=args.ignore, epochs=args.epochs)
    print(text, end="")
    print(f"\nwritten: {out_dir / 'report.md'}, {out_dir / 'report.csv'}"
          + ("" if args.no_plots else f" and the plots in {out_dir}"))
