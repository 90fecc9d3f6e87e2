"""Run folders read into validated records.

A run is a folder holding ``summary.json`` (written by the engine when a run is done, or by
:mod:`qnnrun.sweep` when it failed) or, for a run cut off before it finished, ``last.ckpt`` /
TensorBoard events without one. Every folder is read once, by :func:`read_folder`, into either a
:class:`Run` whose values have their types and ranges (an :class:`Identity` of names and integers,
metrics that are finite numbers in their range) or a :class:`Problem` naming what did not fit:
unreadable or hand-edited records, and duplicate records (a sweep job that repeated an earlier job's
run points at it with ``same_as``; the run counts once, there). Grouping, tables and plots only ever
see validated values. A run's TensorBoard curves (``CURVE_TAGS``: test and train accuracy per epoch)
are read when first asked for (:attr:`Run.curves`). Override values have one spelling
(:func:`canonical`), and a run's config values are written alike (:func:`config_text`), so that a
typed value and a default meet.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qnnrun.errors import QnnrunError
from qnnrun.quant.convert import FLOAT_BITS, LAYER_POLICIES
from qnnrun.runs import EPOCH_TAGS, HYDRA_SUBDIR, LAST_CKPT, STEP_CURVES, SUMMARY, is_free

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


def identity_key_problem(key: str) -> str | None:
    """Why ``key`` names no override to group over (``--ignore``) or, the method aside, to pair by
    (``--paired``), when it is one of :data:`NOT_GROUPED`; ``None`` otherwise."""
    if key == "seed":
        return "runs are grouped, and paired, over their seeds already"
    if key in NOT_GROUPED:
        return (f"{key} is part of what a group is (data set, model, method, bits, epochs, per-layer widths), "
                f"not an override to group over or pair by")
    return None


# The grouping key of a finished run whose schedule extend=true stretched (summary.json "extensions").
EXTENDED = "extended"
# The per-epoch curves a report reads (TensorBoard tags of qnnrun.runs).
CURVE_TAG = EPOCH_TAGS["test_acc"]
TRAIN_CURVE_TAG = EPOCH_TAGS["train_acc"]
CURVE_TAGS = (CURVE_TAG, TRAIN_CURVE_TAG)  # what Run.curves reads
# The statuses of summary.json; a run folder without one is UNFINISHED.
DONE, FAILED, DUPLICATE, UNFINISHED = "done", "failed", "duplicate", "unfinished"
# A folder whose record does not fit (a Problem, not a run).
INVALID = "invalid"
# Method, model and data set names as qnnrun's configs spell them.
NAME = re.compile(r"[A-Za-z0-9_.+-]+")
# How a reader of a file that may hold anything fails: missing or unreadable file, bytes that are
# not UTF-8, text that is not JSON / YAML, nesting too deep to parse.
UNREADABLE = (OSError, ValueError, yaml.YAMLError, RecursionError)
# The largest record file read (summary.json, .hydra/*.yaml are a few KiB): a link to /dev/zero or a
# huge file is refused, not read into memory.
MAX_RECORD_BYTES = 16 << 20
OVERRIDES_FILE = Path(HYDRA_SUBDIR, "overrides.yaml")
CONFIG_FILE = Path(HYDRA_SUBDIR, "config.yaml")
HYDRA_FILE = Path(HYDRA_SUBDIR, "hydra.yaml")
# A finished run's summary.json fields that .hydra/config.yaml also holds (the key there; the bits
# only for a run at one width).
CONFIG_KEYS = {"method": "method.name", "model": "model.name", "dataset": "dataset.name", "seed": "seed",
               "epochs": "trainer.epochs", "bits_w": "bits.w", "bits_a": "bits.a"}
# How a note about a run's TensorBoard events starts.
EVENTS_NOTE = "TensorBoard events"
# How far summary.json's test_acc (a float64 percentage) may be from the float32 TensorBoard logged.
EVENT_TOLERANCE = 1e-3


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
    def choices(self) -> dict[str, str]:
        """Config group -> the option the run composed (``optim: sgd``), from ``.hydra/hydra.yaml``'s
        ``hydra.runtime.choices``, read once per report; empty where that cannot be read."""
        try:
            hydra = yaml.safe_load(_read_text(self.path / HYDRA_FILE))
            choices = hydra["hydra"]["runtime"]["choices"]
        except (*UNREADABLE, KeyError, TypeError):
            return {}
        return {str(k): str(v) for k, v in choices.items()
                if isinstance(v, (str, int)) and not isinstance(v, bool)} if isinstance(choices, dict) else {}

    @functools.cached_property
    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """Tag -> (epoch, value) of each of ``CURVE_TAGS``, its TensorBoard events read once per report;
        empty, with a note, when the events cannot be read."""
        try:
            str(self.path).encode()
        except UnicodeEncodeError:  # TensorBoard's reader opens paths as UTF-8 only
            self.notes.append(f"{EVENTS_NOTE}: not read, since the folder's path is not UTF-8 (rename the folder to "
                              f"read them), no curves")
            return {tag: [] for tag in CURVE_TAGS}
        try:
            return _read_curves(self.path, CURVE_TAGS)
        except Exception as error:  # TensorBoard's reader over whatever bytes the files hold
            self.notes.append(f"{EVENTS_NOTE}: unreadable ({_error_line(error)}), no curves")
            return {tag: [] for tag in CURVE_TAGS}


@dataclass(frozen=True)
class Problem:
    """A folder that holds no run to count: a record that does not fit (``invalid``: the reason
    says which value), or a ``duplicate`` record pointing at the run it repeats."""

    path: Path
    kind: str
    reason: str
    command_line: tuple[str, ...] = ()


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
    if rules is None or (isinstance(rules, Mapping) and not rules):
        return ""
    if not isinstance(rules, Mapping) or not all(
            isinstance(bits, Mapping) and all(isinstance(bits.get(k), int) and not isinstance(bits.get(k), bool)
                                              for k in ("w", "a")) for bits in rules.values()):
        raise _Unfit(f"layer_bits {_show(rules)} is not a mapping of layer patterns to {{w, a}} bits")
    return " ".join(f"{side} " + ",".join(str(bits[side]) for bits in rules.values()) for side in ("w", "a"))


def _read_text(file: Path) -> str:
    """The UTF-8 text of a record file; an OSError for anything but a regular file of at most
    :data:`MAX_RECORD_BYTES` (a FIFO would block the report, a device never end)."""
    if not file.is_file():
        raise OSError(f"{file.name} is not a regular file")
    with open(file, "rb") as handle:
        data = handle.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        raise OSError(f"{file.name} is larger than {MAX_RECORD_BYTES >> 20} MiB")
    return data.decode("utf-8")


def _present(file: Path) -> bool:
    """Whether ``file`` exists (a broken link too); when it cannot be told (no permission to look),
    reading it will say why it fails."""
    try:
        return file.exists() or file.is_symlink()
    except OSError:
        return True


def _load_summary(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(_read_text(path))
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
            lines = yaml.safe_load(_read_text(file))
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
    given. Config values are written alike (:func:`config_text`), so a typed value and a default meet."""
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
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
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
    overrides = _parse_overrides(lines)
    extended = _extensions(record)
    if extended:  # a schedule stretched part-way (extend=true) is not the same run as one planned that long
        overrides[EXTENDED] = extended
    run = Run(folder, DONE, metrics, overrides, lines, identity=identity, seed=seed)
    run.layers = _layer_policy(run.config)
    _check_against_config(run, record)
    _check_against_events(run)
    return run


def _check_against_config(run: Run, record: Mapping[str, Any]) -> None:
    """Refuse a finished run's summary.json that disagrees with its ``.hydra/config.yaml`` (the config
    the run was started with: method, model, data set, seed, planned epochs and, for one width, the
    bits), or whose ``.hydra/overrides.yaml`` gives a plain value that config does not hold: a record
    edited by hand or copied from another run. Where the config does not say (no file, an older
    layout), nothing is compared."""
    from qnnrun.methods import fixed_bits

    config, identity = run.config, run.identity
    assert identity is not None
    one_width = not identity.mixed and not _layer_rules(config)
    fixed = fixed_bits(identity.method)
    if fixed is not None and isinstance(config.get("bits"), dict):  # fp runs at 32, bnn at 1, whatever bits says
        config = {**config, "bits": {"w": fixed, "a": fixed}}
    allowed = {"epochs": {str(step["epochs_before"]) for step in record.get("extensions") or []}}
    for name, key in CONFIG_KEYS.items():
        if name.startswith("bits") and not one_width:
            continue
        value, theirs = _plain_text(record.get(name)), config_text(config, key)
        if theirs is not None and value != theirs and value not in allowed.get(name, ()):
            raise _Unfit(f"{name} {value} is not its {CONFIG_FILE}'s {key} ({theirs}): "
                         f"a record edited by hand, or copied from another run")
    for line in run.command_line:
        key, sep, value = line.partition("=")
        key = key.lstrip("+~")
        theirs = config_text(run.config, key) if sep and not is_free(key) and not key.startswith("hydra") else None
        if theirs is not None and canonical(value) != theirs:
            raise _Unfit(f"{key}={value} is not its {CONFIG_FILE}'s {key} ({theirs}): an override edited by "
                         f"hand, or copied from another run", OVERRIDES_FILE)


def _check_against_events(run: Run) -> None:
    """Refuse a finished run whose summary.json's test_acc is not the last test accuracy its
    TensorBoard events logged; a run whose events hold no test accuracy gets a note (its number is
    then checked against nothing). best_test_acc is not checked: the events do not tell which
    evaluations were of the whole quantized network."""
    acc = run.metrics["test_acc"]
    curve = run.curves[CURVE_TAG]
    if not curve:
        if not any(note.startswith(EVENTS_NOTE) for note in run.notes):  # unreadable ones said so already
            run.notes.append(f"{EVENTS_NOTE}: no test accuracy logged, so {SUMMARY}'s test_acc is checked "
                             f"against nothing")
        return
    # A run killed between logging its last epoch and saving it logs that epoch twice when resumed.
    epoch = max(step for step, _ in curve)
    logged = [value for step, value in curve if step == epoch]
    if all(abs(value - acc) > EVENT_TOLERANCE for value in logged):
        raise _Unfit(f"test_acc {acc:g} is not the last test accuracy its TensorBoard events logged "
                     f"({logged[-1]:.2f} at epoch {epoch}): a record edited by hand, or copied from another run")


def _extensions(record: Mapping[str, Any]) -> str:
    """A run's ``extend=true`` steps as one text (``"3 to 5 at epoch 3"``, several apart by ``; ``);
    empty for a run trained as planned."""
    steps = record.get("extensions") or []
    if not isinstance(steps, list) or not all(
            isinstance(step, Mapping) and all(isinstance(step.get(k), int) and not isinstance(step.get(k), bool)
                                              for k in ("at_epoch", "epochs_before", "epochs")) for step in steps):
        raise _Unfit(f"extensions {_show(steps)} is not a list of {{at_epoch, epochs_before, epochs}}")
    return "; ".join(f"{s['epochs_before']} to {s['epochs']} at epoch {s['at_epoch']}" for s in steps)


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
    reason = error if isinstance(error, str) and error.strip() else "no error recorded"
    identity: Identity | None = None
    lines: list[str] = []
    try:
        lines = _read_command_line(folder, record)
        identity = _identity(record, done=False)
        if not identity.mixed and _layer_rules(record.get("config")):
            identity = None
            reason += (" (not grouped: its per-layer widths, quant.layer_bits, are known only once a run has "
                       "built its model)")
    except _Unfit as unfit:
        reason += f" (not grouped: {unfit})"
    seed = record.get("seed")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    return Run(folder, FAILED, {}, _parse_overrides(lines), lines, reason=reason, identity=identity, seed=seed)


def _layer_rules(config: Any) -> bool:
    """Whether a record's config sets per-layer widths (a non-empty ``quant.layer_bits``)."""
    quant = config.get("quant") if isinstance(config, Mapping) else None
    return bool(quant.get("layer_bits")) if isinstance(quant, Mapping) else False


def _duplicate(folder: Path, record: Mapping[str, Any]) -> Problem:
    first = record.get("same_as")
    if not isinstance(first, str) or not first.strip():
        raise _Unfit(f"a duplicate whose same_as {_show(first)} is not a folder")
    # same_as names the first job's folder as the sweep saw it (absolute, or from where it was started).
    if not any(place.is_dir() for place in (Path(first), folder.parent / Path(first).name)):
        raise _Unfit(f"a duplicate of {first}, which is not there (moved or removed?): this run is counted nowhere")
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
        config = yaml.safe_load(_read_text(file))
    except UNREADABLE as error:
        notes.append(f"{CONFIG_FILE}: unreadable ({_error_line(error)})")
        return {}
    return config if isinstance(config, dict) else {}


def config_text(config: Mapping[str, Any], key: str) -> str | None:
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
            problem = "is not a folder" if path.exists() else "does not exist"
            raise QnnrunError(f"{path} {problem}: give run folders, sweep folders or outputs/")
        folders = {p.parent for p in path.rglob(SUMMARY)}
        folders |= {p.parent for p in path.rglob(LAST_CKPT)}
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


def _read_curves(run_dir: Path, tags: Sequence[str] = (CURVE_TAG,)) -> dict[str, list[tuple[int, float]]]:
    """Tag -> (epoch, value) of each finite scalar in ``tags`` (empty when not logged), from one read of
    the run's TensorBoard events (TensorBoard's own reader, which also drops the steps a resumed run
    rewrote). TensorBoard stores float32: each value is the shortest decimal that float32 holds (63.82,
    not 63.819999694824219), so a mean over seeds rounds as the same mean of summary.json's values."""
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    logged = set(events.Tags().get("scalars", []))
    return {tag: [(e.step, float(str(np.float32(e.value)))) for e in events.Scalars(tag) if math.isfinite(e.value)]
            if tag in logged else [] for tag in tags}
