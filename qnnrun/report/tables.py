"""The report's Markdown: its tables (runs, by bits, by epoch, problems; :func:`markdown` draws each,
also for :mod:`qnnrun.report.paired`), the note on differing first/last-layer policies, and its CSV
(one row per group)."""

from __future__ import annotations

import csv
import dataclasses
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qnnrun.quant.convert import FLOAT_BITS
from qnnrun.report.groups import (LAYER_KEYS, LAYERS, Group, front_groups, group_label, shown_value, task_suffix,
                                  values_by_epoch, varying_keys)
from qnnrun.report.records import CURVE_TAG, DONE, TRAIN_CURVE_TAG, Problem, Run

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
# The summary table's column marking the groups no other group beats in both accuracy and GBOPs.
FRONT_COLUMN = "Pareto"


def layer_policy_note(groups: Sequence[Group]) -> str:
    """A note naming the first/last-layer policies of the quantized groups and the methods of each,
    when they differ (their GBOPs and weight sizes are then not those of one network); empty otherwise."""
    methods: dict[str, set[str]] = defaultdict(set)
    for g in groups:
        if g.layers:
            methods[g.layers].add(g.identity.method)
        elif g.identity.mixed:  # every layer at the widths its label gives, first and last included
            methods["same"].add(f"{g.identity.method} (mixed)")
    if len(methods) < 2:
        return ""
    each = "; ".join(f"{LAYERS}={policy}: {', '.join(sorted(names))}" for policy, names in sorted(methods.items()))
    return (f"**Note: the rows compared differ in their first/last-layer policy** ({' / '.join(LAYER_KEYS)}: "
            f"fp = float, 8 = 8 bits, same = the run's own bits, for a mixed run those its label gives), which "
            f"changes GBOPs and weight size several-fold: {each}. Tables and plot labels give it as {LAYERS}=... "
            f"where uniform runs differ in it; a mixed run's label gives every layer's widths")


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _cell(value: Any) -> str:
    """``value`` as one table cell: a ``|`` or a line break in an error or a path cannot split the row."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown pipe table, columns padded to their widest cell (each cell one line, ``|`` escaped)."""
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
    shown = varying_keys(groups)
    metrics = _metrics(groups)
    header = ["method", "model", "dataset", "bits", "epochs", *shown, "runs", "failed", *[METRICS[m] for m in metrics],
              FRONT_COLUMN]
    digits = {"gbops": 4, "weight_memory_mb": 3, "compression": 1, "train_time_s": 1}
    front = set(front_groups(groups))
    rows = []
    for index, g in enumerate(groups):
        i = g.identity
        rows.append([i.method, i.model, i.dataset, g.bits_label, i.epochs,
                     *[shown_value(g, k) for k in shown], len(g.done), len(g.runs) - len(g.done),
                     *[_fmt(g.mean(m), g.std(m) if m in SPREAD else None, digits.get(m, 2)) for m in metrics],
                     "yes" if index in front else ""])
    return markdown(header, rows)


def bits_table(groups: Sequence[Group]) -> str:
    """Final test accuracy, method (rows) x bits (columns), per model and data set."""
    shown = varying_keys(groups)
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
            row = group_label(g, shown, with_bits=False) + (f" ({g.identity.epochs} ep)" if len(
                {x.identity.epochs for x in task_groups}) > 1 else "")
            change = g.mean("vs_init")
            cell = _fmt(g.mean("test_acc"), g.std("test_acc")) + f" (n={len(g.done)}" + (
                f", {change:+.2f}" if change is not None else "") + ")"
            column = (g.identity.bits_w, g.identity.bits_a)
            if column in rows[row]:  # two groups alike in every shown key: name this one by all of its own
                row = " ".join([row, *(f"{k}={v}" for k, v in sorted(g.extras.items()))])
            rows[row][column] = cell
        body = [[name, *[cells.get(c, "") for c in columns]] for name, cells in rows.items()]
        since = (", then the mean change (points) from the init_from checkpoint's accuracy"
                 if any(g.values("vs_init") for g in task_groups) else "")
        tables.append(f"Final test accuracy (%), {model} on {dataset}, mean ± std over seeds (n = runs{since}):\n\n"
                      + markdown(["method", *labels], body))
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
    return markdown(["status", "run", "overrides", "reason"], cells) if cells else ""


def _cut(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 3] + "..."


def write_csv(groups: Sequence[Group], path: Path) -> None:
    """report.csv: one row per group: its identity, the varying overrides, run counts and seeds, the
    mean and sample std of every metric (empty where none), and ``pareto`` (1 on the accuracy-vs-GBOPs
    front of its model and data set, as the Markdown table marks it, else 0)."""
    shown = varying_keys(groups)
    fields = ["method", "model", "dataset", "bits_w", "bits_a", "epochs", "layer_bits", *shown, "runs", "failed",
              "seeds"]
    for metric in METRICS:
        fields += [f"{metric}_mean", f"{metric}_std"]
    fields.append("pareto")
    front = set(front_groups(groups))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for index, g in enumerate(groups):
            row: dict[str, Any] = {**dataclasses.asdict(g.identity), **{k: shown_value(g, k) for k in shown},
                                   "runs": len(g.done), "failed": len(g.runs) - len(g.done),
                                   "seeds": " ".join(str(r.seed) for r in g.done), "pareto": int(index in front)}
            for metric in METRICS:
                row[f"{metric}_mean"], row[f"{metric}_std"] = g.mean(metric), g.std(metric)
            writer.writerow(row)


def epochs_table(groups: Sequence[Group], epochs: Sequence[int]) -> str:
    """Test accuracy (%) of each group at the given epochs: mean ± std over its finished runs, the
    mean train accuracy (%) in brackets; ``-`` where none of them logged that epoch."""
    shown = varying_keys(groups)
    multi_length = len({g.identity.epochs for g in groups}) > 1
    rows = []
    for g in groups:
        name = group_label(g, shown) + task_suffix(g, groups)
        name += f" ({g.identity.epochs} ep)" if multi_length else ""
        curves = values_by_epoch(g)
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
    return markdown(["test % (train %) at epoch", *[str(e) for e in epochs]], rows)
