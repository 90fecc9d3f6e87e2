"""The report's three PNGs: accuracy against bits, accuracy against GBOPs, test accuracy per epoch.

Every plot draws a method in one colour and marker (the same in every report), error bars (sample
std over seeds) where a group has several finished runs, markers of equal or near-equal value side
by side rather than over each other, labels that overlap nothing (both placed by
:mod:`qnnrun.report.placement`), and its legend beside the data. The bits plot and the curves mark
the init_from net's accuracy (dotted) when every run started from one.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qnnrun.methods import METHODS
from qnnrun.quant.convert import FLOAT_BITS
from qnnrun.report.groups import Group, fronts_by_task, group_label, task_suffix, values_by_epoch, varying_keys
from qnnrun.report.placement import dodge, place_labels, step_samples
from qnnrun.report.records import CURVE_TAG

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
PLOT_WIDTH = 4.5  # inches: the least plotting area a plot keeps beside its legend
PANEL_WIDTH = 4.2  # inches: each panel of the curves' figure
LEGEND_MARGIN = 1.2  # inches beside a plot and its legend: the y-axis label, ticks and paddings


def _series(groups: Sequence[Group], shown: Sequence[str]) -> dict[str, list[Group]]:
    """Groups that form one line of a plot: same method, model, data set, overrides, A/W relation and
    epochs; the name is the line's label."""
    multi_length = len({g.identity.epochs for g in groups}) > 1
    # Where some series keeps its inputs at one width (W1A2, W2A2 ...: "A2"), the others say theirs follow
    # the weights' ("A=W"; a plain "aqe" beside "aqe A2" read as no width at all).
    fixed_inputs = any(not g.identity.mixed and g.identity.bits_a != g.identity.bits_w for g in groups)
    series: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        name = group_label(g, shown, with_bits=False)
        if g.identity.mixed:
            name += " mixed"
        elif g.identity.bits_a != g.identity.bits_w:
            name += f" A{g.identity.bits_a}"
        elif fixed_inputs and not g.identity.is_float:
            name += " A=W"
        name += task_suffix(g, groups)
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


def _dodged_xs(ax: Any, xs: Sequence[float], ys: Sequence[float], errs: Sequence[float],
               widest: float = math.inf) -> list[float]:
    """Data x at which to draw each marker (data ``xs``, ``ys``, error bar half-lengths ``errs``, 0 for
    none) so that none hides another (:func:`~qnnrun.report.placement.dodge` in the axes' pixels, a
    cluster at most ``widest`` pixels across and inside the axes; their limits and size final)."""
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
                   extra: Sequence[tuple[Any, str]] = (), plot_width: float = PLOT_WIDTH) -> None:
    """A legend right of ``ax`` (never over the data): one entry per series in ``names`` drawn in its
    style, then the (handle, label) pairs of ``extra``. The figure is widened where needed so that the
    legend fits beside ``plot_width`` inches of plotting area (a long legend ran off the figure)."""
    from matplotlib.lines import Line2D

    entries = [(Line2D([], [], **styles[name]), name) for name in names] + list(extra)
    if entries:
        handles, labels = zip(*entries)
        legend = ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1),
                           borderaxespad=0, ncols=math.ceil(len(entries) / LEGEND_ROWS))
        fig = ax.figure
        width = legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
        fig.set_figwidth(max(fig.get_figwidth(), plot_width + width + LEGEND_MARGIN))


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
    each other are set side by side around their bit width (:func:`~qnnrun.report.placement.dodge`); a
    crowded plot is widened until those of one bit width fit within ``BITS_SLOT`` of the gap to the next."""
    import matplotlib.pyplot as plt

    series = _series(groups, varying_keys(groups))
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
    ax.set_xticks(bits)  # the bit widths drawn, and only they (one width was ticked 1.4, 1.6, ... 2.6)
    _legend_beside(ax, styles, sorted({p[0] for p in points}), references)
    _fix_layout(fig, ax)
    columns = ([p[1] for p in points], [p[2] for p in points], [p[3] or 0.0 for p in points])
    spread = max((abs(x - p[1]) for x, p in zip(_dodged_xs(ax, *columns), points)), default=0.0)
    if spread > BITS_SLOT * gap / 2:
        fig.set_figwidth(max(fig.get_figwidth(), min(MAX_WIDTH, fig.get_figwidth() * spread / (BITS_SLOT * gap / 2))))
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
    that would hide each other are set side by side (:func:`~qnnrun.report.placement.dodge`); every
    point is labelled (by its bit widths where they tell every point apart, the legend naming the
    series; else by method, bits and the settings that vary), no label over another or over a marker,
    as few as room allows over an error bar or a line (:func:`~qnnrun.report.placement.place_labels`);
    the title counts the labels left out for want of room."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D

    shown = varying_keys(groups)
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
    _plain_log_ticks(ax.xaxis)
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
    # One front per model and data set, as the table marks it.
    fronts = fronts_by_task([p[1] for p in points])
    front = {i for members in fronts for i in members}
    steps = [np.zeros((0, 2))]
    for members in fronts:
        front_xs, front_ys = [xs[i] for i in members], [ys[i] for i in members]
        ax.step(front_xs, front_ys, where="post", color="black", linewidth=1, alpha=0.6, zorder=1)  # under the bars
        ax.scatter(front_xs, front_ys, s=FRONT_CIRCLE ** 2, facecolors="none", edgecolors="black")
        steps.append(step_samples(ax, front_xs, front_ys))
    radii = [(FRONT_CIRCLE if i in front else MARKER_SIZE) / 2 * fig.dpi / 72 for i, _ in enumerate(points)]
    # The legend names each series: where the bit widths alone tell every point apart, they are the labels.
    widths = [p[1].bits_label for p in points]
    texts = widths if len(set(widths)) == len(widths) else [group_label(p[1], shown) for p in points]
    left_out = place_labels(ax, xs, ys, [_literal(text) for text in texts], radii,
                            *_marker_boxes(ax, xs, ys, [p[4] or 0.0 for p in points], radii),
                            np.concatenate(steps))
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


def _plain_log_ticks(axis: Any) -> None:
    """Tick a log axis that spans less than three decades at round numbers written plainly.

    Matplotlib labels the minor ticks of such an axis in scientific notation (``2x10^-3``,
    ``3x10^-3``, ...), and the labels run into each other: within a decade this puts a few round
    numbers (``0.8``, ``1``, ``1.2``, ...), over one or two decades 1, 2 and 5 times each power of ten
    (``0.002``, ``0.005``, ``0.01``), minor ticks unlabelled. Over three decades or more matplotlib's
    decade labels are kept.
    """
    from matplotlib import ticker

    low, high = sorted(axis.get_view_interval())
    if low <= 0 or high / low >= 1000:
        return
    if high / low < 10:
        axis.set_major_locator(ticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        axis.set_minor_locator(ticker.NullLocator())
    else:
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_locator(ticker.LogLocator(base=10, subs=(3.0, 4.0, 6.0, 7.0, 8.0, 9.0)))
        axis.set_minor_formatter(ticker.NullFormatter())
    axis.set_major_formatter(ticker.FormatStrFormatter("%g"))


def plot_test_curves(groups: Sequence[Group], path: Path) -> None:
    """Mean test accuracy (%) per epoch of each group (band: ± std over seeds), one panel per bit width
    with the series overlaid in the styles of the other plots, every panel on the same axes; one
    legend, right of the panels."""
    import matplotlib.pyplot as plt

    series = _series(groups, varying_keys(groups))
    styles = _series_styles(series)
    # One panel per bit width as groups are labelled (a mixed run's per-layer widths are its own, after
    # the uniform widths: its bits_w/bits_a are only its unmatched layers').
    widths = [label for *_, label in sorted({(g.identity.mixed, g.identity.bits_w, g.identity.bits_a, g.bits_label)
                                             for g in groups})]
    columns = min(3, max(1, len(widths)))
    rows = math.ceil(len(widths) / columns) if widths else 1
    fig, axes = plt.subplots(rows, columns, figsize=(PANEL_WIDTH * columns + 1.8, 3.2 * rows), squeeze=False,
                             sharex=True, sharey=True, dpi=DPI)
    drawn, references = set(), {}
    for ax, bits in zip(axes.flat, widths):
        members = [g for g in groups if g.bits_label == bits]
        for name, of_series in sorted(series.items()):
            for g in of_series:
                if g.bits_label == bits and _draw_curve(ax, name, g, styles[name]):
                    drawn.add(name)
        references.update((label, line) for line, label in _mark_init_from(ax, members))
        ax.set_title(bits)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(widths):]:
        ax.set_visible(False)
    for ax in list(axes.flat)[max(0, len(widths) - columns):len(widths)]:  # no panel below: its own epoch ticks
        ax.tick_params(axis="x", labelbottom=True)
    _legend_beside(axes[0, -1], styles, sorted(drawn), [(line, label) for label, line in references.items()],
                   plot_width=PANEL_WIDTH * columns)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _draw_curve(ax: Any, name: str, group: Group, style: Mapping[str, Any]) -> bool:
    """The mean test accuracy (%) per epoch of ``group`` (of series ``name``), a band of ± the std over
    its runs; False when no run logged any."""
    by_epoch = values_by_epoch(group)[CURVE_TAG]
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


BITS_PLOT = "accuracy_vs_bits.png"
PLOTS = {BITS_PLOT: plot_accuracy_vs_bits, "accuracy_vs_gbops.png": plot_accuracy_vs_gbops,
         "test_accuracy_curves.png": plot_test_curves}
