"""``qnnrun report PATH...``: one table and three plots across runs.

A run is a folder holding ``summary.json`` (written by the engine when a run is done, or by
:mod:`qnnrun.sweep` when it failed) or, for a run cut off before it finished, ``last.ckpt`` /
TensorBoard events without one. Runs are grouped by everything but the seed: method, model, data
set, weight and activation bits, epochs and every other key set on the command line
(``.hydra/overrides.yaml``), except the keys given to ``--ignore`` (e.g. ``init_from`` when each
seed fine-tunes its own float run). Each group reports mean and sample standard deviation over its
finished runs; runs that started from a trained net (``init_from``) also the change in final test
accuracy from that net's (``vs init_from``, points: what quantization cost).

Writes into the output folder::

    report.md                 the tables (also printed), failed and unfinished runs with their error
                              (unfinished: the last epoch logged and its test accuracy); with
                              ``--epochs 1,10,30`` also test (and train) accuracy at those epochs
    report.csv                one row per group: counts, mean and std of every metric
    accuracy_vs_bits.png      final test accuracy (%) against weight bits, one line per method
    accuracy_vs_gbops.png     final test accuracy (%) against GBOPs per image (log x), Pareto front marked
    test_accuracy_curves.png  test accuracy (%) per epoch from the TensorBoard events, one panel per method

The bits plot and the curves mark the init_from net's accuracy (dotted) when every run started from one.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import statistics
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qnnrun.errors import QnnrunError
from qnnrun.sweep import STEP_CURVES, SUMMARY, read_summary

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
# Identity of a run, from its summary (or failure record).
IDENTITY = ("method", "model", "dataset", "bits_w", "bits_a", "epochs")
# Overrides that identify a run already through IDENTITY, or do not change its result.
NOT_GROUPED = {"seed", "resume", "method", "model", "dataset", "bits", "bits.w", "bits.a", "trainer.epochs",
               "trainer.progress", "trainer.num_threads", "paths.data_dir", "paths.cache_dir"}
CURVE_TAG = "test/acc"
TRAIN_CURVE_TAG = "train/acc"
CURVE_TAGS = (CURVE_TAG, TRAIN_CURVE_TAG)  # what Run.curves reads
# Markers cycle with matplotlib's 10 colours so that up to 100 series stay apart.
MARKERS = "os^Dv<>PX*"
FLOAT_BITS = 32


@dataclass
class Run:
    """One run folder: ``status`` is done, failed or unfinished (no summary.json yet)."""

    path: Path
    status: str
    summary: dict[str, Any]
    overrides: dict[str, str]  # the grouping ones
    command_line: list[str]  # every override as given
    progress: str = ""  # unfinished runs: how far they got

    @property
    def error(self) -> str:
        return str(self.summary.get("error", f"no summary.json: interrupted or still running{self.progress}"))

    @functools.cached_property
    def curves(self) -> dict[str, list[tuple[int, float]]]:
        """Tag -> (epoch, value) of each of ``CURVE_TAGS``, its TensorBoard events read once per report."""
        return read_curves(self.path, CURVE_TAGS)


@dataclass
class Group:
    """Runs that differ at most in their seed."""

    identity: dict[str, Any]
    extras: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.status == "done"]

    def values(self, metric: str) -> list[float]:
        return [float(r.summary[metric]) for r in self.done if isinstance(r.summary.get(metric), (int, float))]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else None

    @property
    def bits_label(self) -> str:
        w, a = self.identity["bits_w"], self.identity["bits_a"]
        return "FP32" if w == a == FLOAT_BITS else f"W{w}A{a}"


def _parse_overrides(lines: Iterable[Any]) -> dict[str, str]:
    """``key=value`` override lines -> {key: value} without the grouping-neutral keys."""
    parsed = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        key = key.lstrip("+~")
        if sep and key not in NOT_GROUPED and not key.startswith("hydra"):
            parsed[key] = value
    return parsed


def _read_run(folder: Path) -> Run:
    summary = read_summary(folder)
    overrides_file = folder / ".hydra" / "overrides.yaml"
    lines: list[Any] = []
    if overrides_file.is_file():
        lines = yaml.safe_load(overrides_file.read_text()) or []
    elif summary is not None:
        lines = summary.get("overrides", [])
    lines = [str(line) for line in lines]
    if summary is None:
        return Run(folder, "unfinished", {}, _parse_overrides(lines), lines, _progress(folder))
    status = "done" if summary.get("status") == "done" else "failed"
    if isinstance(summary.get("init_test_acc"), (int, float)) and isinstance(summary.get("test_acc"), (int, float)):
        summary = {**summary, "vs_init": summary["test_acc"] - summary["init_test_acc"]}
    return Run(folder, status, summary, _parse_overrides(lines), lines)


def _progress(folder: Path) -> str:
    """``", at epoch 12 of 30 (test acc 79.20%)"`` for a run without summary, from its TensorBoard
    events and its config; empty when it logged no epoch."""
    curve = read_curves(folder)[CURVE_TAG]
    if not curve:
        return ""
    epoch, acc = curve[-1]
    config = folder / ".hydra" / "config.yaml"
    total = ""
    if config.is_file():
        epochs = ((yaml.safe_load(config.read_text()) or {}).get("trainer") or {}).get("epochs")
        total = f" of {epochs}" if epochs is not None else ""
    return f", at epoch {epoch}{total} (test acc {acc:.2f}%)"


def find_runs(paths: Sequence[Path]) -> list[Run]:
    """Every run under ``paths`` (each a run folder, a sweep folder or any folder above them)."""
    runs: dict[Path, Run] = {}
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
            runs.setdefault(folder.resolve(), _read_run(folder))
    return sorted(runs.values(), key=lambda r: str(r.path))


def group_runs(runs: Sequence[Run], ignore: Collection[str] = ()) -> list[Group]:
    """Runs with a known identity, grouped by it and by their other overrides (seed and the override
    keys in ``ignore`` aside)."""
    groups: dict[tuple[Any, ...], Group] = {}
    for run in runs:
        identity = {k: run.summary.get(k) for k in IDENTITY}
        if run.status == "unfinished" or identity["method"] is None:
            continue
        extras = {k: v for k, v in run.overrides.items() if k not in ignore}
        key = (tuple(identity.values()), tuple(sorted(extras.items())))
        groups.setdefault(key, Group(identity, extras)).runs.append(run)
    return sorted(groups.values(), key=_group_order)


def _group_order(group: Group) -> tuple[Any, ...]:
    i = group.identity
    return (str(i["dataset"]), str(i["model"]), str(i["method"]), i["bits_w"] or 0, i["bits_a"] or 0,
            i["epochs"] or 0, sorted(group.extras.items()))


def _varying_keys(groups: Sequence[Group]) -> list[str]:
    """Override keys whose value is not the same in every group: the columns worth showing."""
    keys = sorted({k for g in groups for k in g.extras})
    return [k for k in keys if len({g.extras.get(k, "") for g in groups}) > 1]


def _label(group: Group, shown: Sequence[str], with_bits: bool = True) -> str:
    parts = [str(group.identity["method"])]
    if with_bits:
        parts.append(group.bits_label)
    parts += [f"{k}={group.extras[k]}" for k in shown if k in group.extras]
    return " ".join(parts)


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
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
        rows.append([i["method"], i["model"], i["dataset"], g.bits_label, i["epochs"],
                     *[g.extras.get(k, "") for k in shown], len(g.done), len(g.runs) - len(g.done),
                     *[_fmt(g.mean(m), g.std(m) if m in SPREAD else None, digits.get(m, 2)) for m in metrics]])
    return _markdown(header, rows)


def bits_table(groups: Sequence[Group]) -> str:
    """Final test accuracy, method (rows) x bits (columns), per model and data set."""
    shown = _varying_keys(groups)
    tables = []
    by_task: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        by_task[(str(g.identity["model"]), str(g.identity["dataset"]))].append(g)
    for (model, dataset), task_groups in sorted(by_task.items()):
        columns = sorted({(g.identity["bits_w"], g.identity["bits_a"]) for g in task_groups})
        labels = ["FP32" if c == (FLOAT_BITS, FLOAT_BITS) else f"W{c[0]}A{c[1]}" for c in columns]
        rows: dict[str, dict[tuple[int, int], str]] = defaultdict(dict)
        for g in task_groups:
            row = _label(g, shown, with_bits=False) + (f" ({g.identity['epochs']} ep)" if len(
                {x.identity["epochs"] for x in task_groups}) > 1 else "")
            change = g.mean("vs_init")
            cell = _fmt(g.mean("test_acc"), g.std("test_acc")) + f" (n={len(g.done)}" + (
                f", {change:+.2f}" if change is not None else "") + ")"
            rows[row][(g.identity["bits_w"], g.identity["bits_a"])] = cell
        body = [[name, *[cells.get(c, "") for c in columns]] for name, cells in rows.items()]
        since = (", then the mean change (points) from the init_from checkpoint's accuracy"
                 if any(g.values("vs_init") for g in task_groups) else "")
        tables.append(f"Final test accuracy (%), {model} on {dataset}, mean ± std over seeds (n = runs{since}):\n\n"
                      + _markdown(["method", *labels], body))
    return "\n\n".join(tables)


def problems_table(runs: Sequence[Run]) -> str:
    rows = [[r.status, str(r.path), " ".join(r.command_line) or "-",
             r.error.replace("|", "\\|")] for r in runs if r.status != "done"]
    return _markdown(["status", "run", "overrides", "error"], rows) if rows else ""


def write_csv(groups: Sequence[Group], path: Path) -> None:
    shown = _varying_keys(groups)
    fields = ["method", "model", "dataset", "bits_w", "bits_a", "epochs", *shown, "runs", "failed", "seeds"]
    for metric in METRICS:
        fields += [f"{metric}_mean", f"{metric}_std"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for g in groups:
            row: dict[str, Any] = {**g.identity, **{k: g.extras.get(k, "") for k in shown}, "runs": len(g.done),
                                   "failed": len(g.runs) - len(g.done),
                                   "seeds": " ".join(str(r.summary.get("seed")) for r in g.done)}
            for metric in METRICS:
                row[f"{metric}_mean"], row[f"{metric}_std"] = g.mean(metric), g.std(metric)
            writer.writerow(row)


def read_curves(run_dir: Path, tags: Sequence[str] = (CURVE_TAG,)) -> dict[str, list[tuple[int, float]]]:
    """Tag -> (epoch, value) of each scalar in ``tags`` (empty when not logged), from one read of the
    run's TensorBoard events (TensorBoard's own reader, which also drops the steps a resumed run
    rewrote)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    logged = set(events.Tags().get("scalars", []))
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] if tag in logged else [] for tag in tags}


def _series(groups: Sequence[Group], shown: Sequence[str]) -> dict[str, list[Group]]:
    """Groups that form one line of a plot: same method, model, data set, overrides and A/W relation."""
    multi_task = len({(g.identity["model"], g.identity["dataset"]) for g in groups}) > 1
    series: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        name = _label(g, shown, with_bits=False)
        if g.identity["bits_a"] != g.identity["bits_w"]:
            name += f" A{g.identity['bits_a']}"
        if multi_task:
            name += f" ({g.identity['model']}, {g.identity['dataset']})"
        series[name].append(g)
    return series


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
    starts = {r.summary["init_test_acc"] for g in groups for r in g.done
              if isinstance(r.summary.get("init_test_acc"), (int, float))}
    if len(starts) == 1:
        start = starts.pop()
        ax.axhline(start, linestyle=":", linewidth=1, color="black")
        ax.annotate(f"init_from net: {start:.2f}%", (0.99, start), xycoords=("axes fraction", "data"), fontsize=7,
                    ha="right", va="bottom")


def plot_accuracy_vs_bits(groups: Sequence[Group], path: Path) -> None:
    import matplotlib.pyplot as plt

    shown = _varying_keys(groups)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for index, (name, members) in enumerate(sorted(_series(groups, shown).items())):
        points = sorted((g.identity["bits_w"], g.mean("test_acc"), g.std("test_acc") or 0.0)
                        for g in members if g.mean("test_acc") is not None)
        quantized = [p for p in points if p[0] != FLOAT_BITS]
        for _, acc, _ in [p for p in points if p[0] == FLOAT_BITS]:
            ax.axhline(acc, linestyle="--", linewidth=1, color="gray")
            ax.annotate(f"{name} FP32", (0.01, acc), xycoords=("axes fraction", "data"), fontsize=7,
                        va="bottom", color="gray")
        if quantized:
            xs, ys, errs = zip(*quantized)
            ax.errorbar(xs, ys, yerr=errs, marker=MARKERS[index // 10 % len(MARKERS)], capsize=3, label=name)
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
    for index, (name, members) in enumerate(sorted(_series(placed, shown).items())):
        xs = [g.mean("gbops") for g in members]
        ys = [g.mean("test_acc") for g in members]
        errs = [g.std("test_acc") or 0.0 for g in members]
        ax.errorbar(xs, ys, yerr=errs, marker=MARKERS[index // 10 % len(MARKERS)], linestyle="none", capsize=3,
                    label=name)
        for g, x, y in zip(members, xs, ys):
            ax.annotate(_label(g, shown), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6)
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
    multi_task = len({(g.identity["model"], g.identity["dataset"]) for g in groups}) > 1
    multi_length = len({g.identity["epochs"] for g in groups}) > 1
    rows = []
    for g in groups:
        name = _label(g, shown) + (f" ({g.identity['model']}, {g.identity['dataset']})" if multi_task else "")
        name += f" ({g.identity['epochs']} ep)" if multi_length else ""
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
    """Mean test accuracy per epoch of each group (band: ± std over seeds), one panel per method."""
    import matplotlib.pyplot as plt

    shown = _varying_keys(groups)
    methods = sorted({str(g.identity["method"]) for g in groups})
    columns = min(3, max(1, len(methods)))
    rows = math.ceil(len(methods) / columns) if methods else 1
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, method in zip(axes.flat, methods):
        members = [g for g in groups if str(g.identity["method"]) == method]
        for g in members:
            by_epoch = _by_epoch(g)[CURVE_TAG]
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            means = [statistics.fmean(by_epoch[e]) for e in epochs]
            stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
            line = ax.plot(epochs, means, marker="." if len(epochs) < 30 else None,
                           label=_label(g, shown).removeprefix(method).strip() or method)[0]
            ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=line.get_color(), alpha=0.15)
        _mark_init_from(ax, members)
        ax.set_title(method)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(methods):]:
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
    runs = find_runs(paths)
    keys = sorted({key for run in runs for key in run.overrides})
    for key in ignore:
        if key not in keys:
            raise QnnrunError(f"--ignore {key}: no run sets it; the keys the runs set are {', '.join(keys) or 'none'}")
    groups = group_runs(runs, ignore)
    counts = {s: sum(r.status == s for r in runs) for s in ("done", "failed", "unfinished")}
    parts = [f"# qnnrun report\n\n{len(runs)} runs under {', '.join(str(p) for p in paths)}: "
             f"{counts['done']} done, {counts['failed']} failed, {counts['unfinished']} unfinished; "
             f"{len(groups)} groups (runs that differ only in their seed"
             + "".join(f", {key}" for key in ignore) + ")."]
    if groups:
        parts += ["## Runs, mean ± std over seeds\n\n" + summary_table(groups), "## By bits\n\n" + bits_table(groups)]
    finished = [g for g in groups if g.done]
    if epochs and finished:
        parts.append("## By epoch\n\n" + epochs_table(finished, epochs))
    problems = problems_table(runs)
    if problems:
        parts.append("## Failed and unfinished runs\n\n" + problems)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(groups, out_dir / "report.csv")
    if plots and finished:
        for name, plot in PLOTS.items():
            plot(finished, out_dir / name)
        parts.append("## Plots\n\n" + "\n".join(f"![{name}]({name})" for name in PLOTS))
    text = "\n\n".join(parts) + "\n"
    (out_dir / "report.md").write_text(text)
    return text


def _epoch_list(text: str) -> list[int]:
    """``"1,10,30"`` -> ``[1, 10, 30]``; anything but positive integers is an argparse error."""
    try:
        epochs = [int(part) for part in text.split(",")]
    except ValueError:
        epochs = []
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected epoch numbers (from 1) separated by commas, e.g. 1,10,30")
    return epochs


def main(argv: Sequence[str]) -> None:
    """``qnnrun report PATH... [--out DIR] [--no-plots] [--ignore KEY] [--epochs LIST]``."""
    parser = argparse.ArgumentParser(
        prog="qnnrun report",
        description="Tables and plots across runs: reads every run folder under PATH (summary.json and "
                    "TensorBoard events), groups runs that differ only in their seed, and reports mean ± std "
                    "and run counts of final test accuracy, GBOPs, weight size and train time. Writes "
                    "report.md, report.csv, accuracy_vs_bits.png, accuracy_vs_gbops.png and "
                    "test_accuracy_curves.png; prints the tables. Failed and unfinished runs are listed "
                    "with their error.",
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
