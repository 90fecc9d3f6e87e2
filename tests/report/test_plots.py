"""``qnnrun report``'s plots stay readable across a many-method sweep (issue 38): no marker hides
another, error bars where a series has several seeds, labels that overlap nothing, legends beside
the data, and the first/last-layer policy named where the compared runs differ in it."""

from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from report_files import write_run

from qnnrun.methods import METHODS
from qnnrun.report import build_report
from qnnrun.report.groups import Group
from qnnrun.report.plots import (DPI, FRONT_CIRCLE, MARKER_SIZE, _mark_init_from, _plain_log_ticks,
                                 method_style, plot_accuracy_vs_bits, plot_accuracy_vs_gbops, plot_test_curves, shade)
from qnnrun.report.records import Identity, Run, read_folder
from qnnrun.report.tables import layer_policy_note

matplotlib.use("Agg")
MARKER_PIXELS = MARKER_SIZE * DPI / 72


def group(method: str, bits: int, accs: Sequence[float], gbops: float = 0.02,
          layers: tuple[str, str] | None = ("fp", "fp")) -> Group:
    """A group of finished runs, one per accuracy (%), as read from their folders."""
    identity = Identity("digits", "mlp", method, bits, bits, 3)
    runs = [Run(Path(f"{method}_{bits}_{seed}"), "done", {"test_acc": acc, "gbops": gbops}, {}, [],
                identity=identity, seed=seed, layers=layers) for seed, acc in enumerate(accs)]
    return Group(identity, {}, runs)


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The figures the plots draw, kept open for inspection (the plots close them when saved)."""
    import matplotlib.pyplot as plt

    kept: list[Any] = []
    close = plt.close
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for figure in kept:
        close(figure)


def marker_pixels(ax: Any) -> dict[str, list[tuple[float, float]]]:
    """Series name -> pixel centres of its markers (the lines the plots label with the series' name)."""
    return {line.get_label(): [tuple(p) for p in ax.transData.transform(line.get_xydata())]
            for line in ax.lines if not line.get_label().startswith("_")}


# --- accuracy vs bits ---------------------------------------------------------------------------------

def test_equal_and_near_equal_accuracies_at_one_bit_width_are_drawn_side_by_side(figures: list[Any],
                                                                                 tmp_path: Path) -> None:
    groups = [group("ste", 2, [90.0]), group("lsq", 2, [90.0]), group("pact", 2, [90.03]),
              group("dorefa", 2, [60.0]), group("ste", 4, [95.0])]
    plot_accuracy_vs_bits(groups, tmp_path / "bits.png")
    (ax,) = figures[0].axes
    markers = marker_pixels(ax)
    crowded = [markers["ste"][0], markers["lsq"][0], markers["pact"][0]]
    for a, b in itertools.combinations(crowded, 2):
        assert abs(a[0] - b[0]) >= MARKER_PIXELS
    lines = {line.get_label(): line.get_xdata() for line in ax.lines}
    assert list(lines["dorefa"]) == [2] and lines["ste"][1] == 4  # alone at their height: not moved
    assert all(abs(lines[name][0] - 2) < 0.4 for name in ("ste", "lsq", "pact"))


def test_the_bits_axis_ticks_the_bit_widths_drawn(figures: list[Any], tmp_path: Path) -> None:
    plot_accuracy_vs_bits([group("ste", 2, [90.0]), group("lsq", 2, [91.0])], tmp_path / "one.png")
    plot_accuracy_vs_bits([group("ste", 2, [90.0]), group("ste", 3, [92.0]), group("ste", 8, [95.0])],
                          tmp_path / "three.png")
    assert [list(fig.axes[0].get_xticks()) for fig in figures] == [[2], [2, 3, 8]]


def test_a_crowded_bits_plot_widens_until_each_bit_width_holds_its_markers(figures: list[Any],
                                                                           tmp_path: Path) -> None:
    groups = [group(method, bits, [90.0]) for method in sorted(METHODS) for bits in range(1, 9)]
    plot_accuracy_vs_bits(groups, tmp_path / "bits.png")
    (ax,) = figures[0].axes
    for bits in range(1, 9):
        xs = sorted(line.get_xdata()[bits - 1] for line in ax.lines if not line.get_label().startswith("_"))
        assert all(abs(x - bits) <= 0.4 + 1e-9 for x in xs)
        pixels = [ax.transData.transform((x, 90.0))[0] for x in xs]
        assert all(b - a >= MARKER_PIXELS for a, b in zip(pixels, pixels[1:]))


def test_error_bars_are_drawn_where_a_series_has_several_seeds(figures: list[Any], tmp_path: Path) -> None:
    plot_accuracy_vs_bits([group("ste", 2, [90.0, 92.0]), group("lsq", 2, [85.0])], tmp_path / "bits.png")
    (ax,) = figures[0].axes
    (bars,) = ax.containers  # lsq, one seed: none
    assert bars.get_label() == "ste" and bars.has_yerr
    ((low, high),) = [segment[:, 1] for segment in bars.lines[2][0].get_segments()]
    assert (low, high) == pytest.approx((91 - 2 ** 0.5, 91 + 2 ** 0.5))


def test_the_legend_is_beside_the_data(figures: list[Any], tmp_path: Path) -> None:
    plot_accuracy_vs_bits([group(m, 2, [90.0]) for m in sorted(METHODS) if m != "fp"], tmp_path / "bits.png")
    (ax,) = figures[0].axes
    figures[0].canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 > ax.bbox.x1
    assert legend.x1 <= figures[0].bbox.x1 + 1  # and inside the figure


# --- accuracy vs GBOPs: labels ------------------------------------------------------------------------

def test_gbops_labels_overlap_no_label_and_no_marker(figures: list[Any], tmp_path: Path) -> None:
    """Thirteen methods in two tight clusters (the smoke sweep's shape), some with equal values."""
    methods = sorted(METHODS)
    groups = [group(m, 2, [96.0 + (i % 4) * 0.3], gbops=0.02 if i % 2 else 0.0027) for i, m in enumerate(methods)]
    plot_accuracy_vs_gbops(groups, tmp_path / "gbops.png")
    (ax,) = figures[0].axes
    figures[0].canvas.draw()
    labels = [t.get_window_extent() for t in ax.texts]
    assert sorted(t.get_text().split()[0] for t in ax.texts) == methods
    for a, b in itertools.combinations(labels, 2):
        assert not a.overlaps(b)
    (circles,) = ax.collections  # the Pareto front's
    drawn = [(centre, MARKER_PIXELS / 2) for centres in marker_pixels(ax).values() for centre in centres]
    drawn += [(centre, FRONT_CIRCLE / 2 * DPI / 72) for centre in ax.transData.transform(circles.get_offsets())]
    for (x, y), radius in drawn:
        marker = matplotlib.transforms.Bbox.from_extents(x - radius, y - radius, x + radius, y + radius)
        assert not any(box.overlaps(marker) for box in labels)
    assert all(ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 for box in labels)


def test_points_the_bit_widths_tell_apart_are_labelled_by_them(figures: list[Any], tmp_path: Path) -> None:
    """A uniform sweep beside another method's other widths: the legend names the methods, the labels
    give the widths (full labels were long enough that a mixed search beside a sweep lost some)."""
    groups = [group("ste", bits, [90.0 + bits], gbops=0.001 * bits) for bits in (2, 4, 8)]
    plot_accuracy_vs_gbops([*groups, group("lsq", 3, [93.0], gbops=0.003)], tmp_path / "gbops.png")
    assert sorted(t.get_text() for t in figures[0].axes[0].texts) == ["W2A2", "W3A3", "W4A4", "W8A8"]
    assert [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()][:2] == ["lsq", "ste"]


def test_labels_without_room_are_left_out_and_counted_in_the_title(figures: list[Any], tmp_path: Path) -> None:
    groups = [group(m, bits, [90.0], gbops=0.02) for m in sorted(METHODS) for bits in range(1, 9)]
    plot_accuracy_vs_gbops(groups, tmp_path / "gbops.png")
    (ax,) = figures[0].axes
    figures[0].canvas.draw()
    labels = [t.get_window_extent() for t in ax.texts]
    assert 0 < len(labels) < len(groups)
    left_out = len(groups) - len(labels)
    assert ax.get_title() == f"Accuracy vs compute ({left_out} of {len(groups)} labels left out: no room)"
    assert not any(a.overlaps(b) for a, b in itertools.combinations(labels, 2))


# --- layer policy ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("first", "last", "policy", "shown"), [
    ("fp", "fp", ("fp", "fp"), "fp"), (8, 8, ("8", "8"), "8"), ("8", "fp", ("8", "fp"), "8/fp"),
    ("same", "[1]", None, None), ("true", "fp", None, None)])
def test_the_layer_policy_is_read_from_the_run_config(first: Any, last: Any, policy: tuple[str, str] | None,
                                                      shown: str | None, tmp_path: Path) -> None:
    run = read_folder(write_run(tmp_path / "run", "ste", first, last))
    assert isinstance(run, Run) and run.layers == policy and not run.notes
    assert Group(run.identity, {}, [run]).layers == shown
    float_run = read_folder(write_run(tmp_path / "float", "fp", first, last, bits_w=32, bits_a=32))
    assert Group(float_run.identity, {}, [float_run]).layers is None  # it changes nothing there


def test_an_unreadable_config_beside_a_finished_run_is_noted(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run", "ste", "fp", "fp")
    (folder / ".hydra" / "config.yaml").write_text("quant: [first_layer\n")
    run = read_folder(folder)
    assert isinstance(run, Run) and run.layers is None and run.metrics["test_acc"] == 90.0
    assert run.notes[0].startswith(".hydra/config.yaml: unreadable (ParserError: ")


def test_a_note_and_the_labels_name_the_layer_policy_where_compared_runs_differ(tmp_path: Path,
                                                                                 figures: list[Any]) -> None:
    write_run(tmp_path / "runs" / "ste", "ste", "fp", "fp")
    write_run(tmp_path / "runs" / "dorefa", "dorefa", "fp", "fp")
    write_run(tmp_path / "runs" / "lsq", "lsq", 8, 8, gbops=0.003)
    text = build_report([tmp_path / "runs"], tmp_path / "out", plots=True)
    assert text == (tmp_path / "out" / "report.md").read_text()
    note = next(line for line in text.splitlines() if line.startswith("**Note"))
    assert "quant.first_layer / quant.last_layer" in note
    assert "first/last=8: lsq; first/last=fp: dorefa, ste." in note
    assert "| lsq    | mlp   | digits  | W2A2 | 3      | 8          |" in text  # a column of the table
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert legend == ["dorefa first/last=fp", "lsq first/last=8", "ste first/last=fp"]
    gbops_labels = sorted(t.get_text() for t in figures[1].axes[0].texts)
    assert gbops_labels == ["dorefa W2A2 first/last=fp", "lsq W2A2 first/last=8", "ste W2A2 first/last=fp"]


def test_runs_of_several_models_are_plotted_apart_and_an_earlier_reports_plots_go(tmp_path: Path,
                                                                                  figures: list[Any]) -> None:
    """One figure of each plot per model and data set (a whole tree of runs drew a digits MLP and a
    CIFAR-10 ResNet on one axis, one Pareto line across both); a later report into the same folder
    leaves none of an earlier one's plots that its report.md does not show."""
    write_run(tmp_path / "runs" / "ste", "ste", "fp", "fp")
    write_run(tmp_path / "runs" / "lsq", "lsq", "fp", "fp", test_acc=92.0)
    write_run(tmp_path / "runs" / "r20", "ste", "fp", "fp", model="resnet20", dataset="cifar10", gbops=1.1,
              test_acc=85.0)
    text = build_report([tmp_path / "runs"], tmp_path / "out", plots=True)
    names = [f"{plot}_{task}.png" for plot in ("accuracy_vs_bits", "accuracy_vs_gbops", "test_accuracy_curves")
             for task in ("mlp_digits", "resnet20_cifar10")]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(names)
    assert text.endswith("## Plots\n\n" + "\n".join(f"![{name}]({name})" for name in names) + "\n")
    legends = [sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) for fig in figures[:2]]
    assert legends == [["lsq", "ste"], ["ste"]]  # no "(mlp, digits)": each figure is of one model
    shutil.rmtree(tmp_path / "runs" / "r20")
    (tmp_path / "out" / "accuracy_vs_bits_mine.png").write_bytes(b"a plot of the user's own")  # not the report's
    build_report([tmp_path / "runs"], tmp_path / "out", plots=True)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "accuracy_vs_bits.png", "accuracy_vs_bits_mine.png", "accuracy_vs_gbops.png", "test_accuracy_curves.png"]


def test_no_note_and_no_policy_in_labels_where_the_compared_runs_share_it(tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "ste", "ste", "fp", "fp")
    write_run(tmp_path / "runs" / "dorefa", "dorefa", "fp", "fp")
    write_run(tmp_path / "runs" / "fp", "fp", 8, 8, bits_w=32, bits_a=32)  # float: the policy changes nothing
    text = build_report([tmp_path / "runs"], tmp_path / "out", plots=False)
    assert "Note" not in text and "first/last" not in text
    assert layer_policy_note([group("ste", 2, [90.0]), group("lsq", 2, [90.0], layers=None)]) == ""


def test_mixed_runs_beside_uniform_runs_with_float_end_layers_get_the_note() -> None:
    """A search quantizes every layer at its own widths; the uniform sweep beside it kept its first
    and last layers float: said, as between two uniform policies (the report was silent)."""
    mixed = group("ste", 4, [98.3], gbops=0.003, layers=None)
    mixed.identity = dataclasses.replace(mixed.identity, layer_bits="w 4,4,3 a 8,4,3")
    note = layer_policy_note([group("ste", 2, [98.6]), mixed])
    assert "first/last=fp: ste; first/last=same: ste (mixed)" in note
    assert "same = the run's own bits, for a mixed run those its label gives)" in note  # "a mixed run's its label's"
    assert layer_policy_note([mixed]) == ""
    assert layer_policy_note([group("ste", 2, [98.6], layers=("same", "same")), mixed]) == ""  # as the preset says


# --- styles and the curves ------------------------------------------------------------------------

def test_every_method_has_a_colour_and_a_marker_of_its_own() -> None:
    styles = [method_style(method) for method in sorted(METHODS)]
    assert len({colour for colour, _ in styles}) == len({marker for _, marker in styles}) == len(METHODS)


def test_shade_mixes_towards_white_or_black_and_lightens_what_is_too_dark_to_darken() -> None:
    assert shade("#ff7f0e", 0.0) == "#ff7f0e"
    assert shade("#ff7f0e", 0.5) == "#ffbf86"  # halfway to white: 255, (127+255)/2, (14+255)/2 = 134.5 -> 134
    assert shade("#ff7f0e", -0.5) == "#804007"  # halfway to black
    assert shade("#000000", -0.5) == shade("#000000", 0.5) == "#808080"


def test_series_of_one_method_differ_in_shade_and_line_style(figures: list[Any], tmp_path: Path) -> None:
    mixed = group("ste", 2, [90.0])
    mixed.identity = Identity("digits", "mlp", "ste", 2, 8, 3)  # W2A8: a second series of ste
    plot_accuracy_vs_bits([group("ste", 2, [90.0]), mixed, group("lsq", 2, [91.0])], tmp_path / "bits.png")
    figures[0].canvas.draw()
    lines = {line.get_label(): line for ax in figures[0].axes for line in ax.lines
             if not line.get_label().startswith("_")}
    assert set(lines) == {"ste A=W", "ste A8", "lsq A=W"}  # beside a fixed A8, the others say A=W
    assert lines["ste A8"].get_color() == method_style("ste")[0]  # the first of ste's series by name
    assert lines["lsq A=W"].get_color() == method_style("lsq")[0]
    assert lines["ste A=W"].get_color() not in {method_style(m)[0] for m in METHODS}
    assert lines["ste A8"].get_linestyle() != lines["ste A=W"].get_linestyle()
    assert lines["ste A8"].get_marker() == lines["ste A=W"].get_marker()


def test_a_mixed_series_has_hollow_markers_in_the_plot_and_its_legend(figures: list[Any], tmp_path: Path) -> None:
    """Beside a uniform series of the same method (the same marker, a near shade) it stays apart."""
    mixed = group("lsq", 8, [92.0], gbops=0.03)
    mixed.identity = Identity("digits", "mlp", "lsq", 8, 8, 3, layer_bits="w 8,4,2 a 8,4,8")
    plot_accuracy_vs_gbops([group("lsq", 2, [90.0]), group("lsq", 4, [93.0], gbops=0.05), mixed],
                           tmp_path / "gbops.png")
    figures[0].canvas.draw()
    ax = figures[0].axes[0]
    lines = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    assert set(lines) == {"lsq", "lsq mixed"}
    assert lines["lsq"].get_markerfacecolor() == lines["lsq"].get_color()
    assert lines["lsq mixed"].get_markerfacecolor() == "white"
    handles = {text.get_text(): handle for text, handle in zip(ax.get_legend().get_texts(),
                                                                ax.get_legend().legend_handles)}
    assert handles["lsq mixed"].get_markerfacecolor() == "white"
    assert handles["lsq"].get_markerfacecolor() == lines["lsq"].get_color()


def test_the_plotted_front_is_taken_per_model_and_data_set_as_the_table_marks_it(figures: list[Any],
                                                                                  tmp_path: Path) -> None:
    """Three groups, each on the front of its own task: all three circled, no line joins two tasks."""
    digits = group("ste", 2, [99.5], gbops=0.02)
    lenet = [group("ste", 2, [98.0], gbops=0.3), group("ste", 4, [99.0], gbops=0.5)]
    for g in lenet:
        g.identity = Identity("mnist", "lenet5", "ste", g.identity.bits_w, g.identity.bits_a, 3)
    plot_accuracy_vs_gbops([digits, *lenet], tmp_path / "gbops.png")
    ax = figures[0].axes[0]
    from matplotlib.collections import PathCollection

    circled = [y for c in ax.collections if isinstance(c, PathCollection) for _, y in c.get_offsets()]
    assert sorted(circled) == [98.0, 99.0, 99.5]
    steps = [line for line in ax.lines if line.get_label().startswith("_") and line.get_drawstyle() == "steps-post"]
    assert sorted(len(line.get_xdata()) for line in steps) == [1, 2]


def test_curve_panels_are_one_per_bits_label(figures: list[Any], tmp_path: Path) -> None:
    """A mixed group and a uniform group with the same nominal bits are two panels, each titled for its own;
    mixed panels follow the uniform widths (the mixed one stood between W4A4 and W8A8)."""
    uniform, wider = group("ste", 4, [90.0]), group("ste", 8, [92.0])
    mixed = group("dorefa", 4, [91.0])
    mixed.identity = Identity("digits", "mlp", "dorefa", 4, 4, 3, layer_bits="w 8,4 a 8,4")
    for g in (uniform, wider, mixed):
        for run in g.done:
            run.__dict__["curves"] = {"test/acc": [(1, 80.0), (2, run.metrics["test_acc"])], "train/acc": []}
    plot_test_curves([uniform, wider, mixed], tmp_path / "curves.png")
    panels = {ax.get_title(): {line.get_label() for line in ax.lines} for ax in figures[0].axes if ax.get_visible()}
    assert panels == {"W4A4": {"ste"}, "W8A8": {"ste"}, "mixed[w 8,4 a 8,4]": {"dorefa mixed"}}
    assert list(panels) == ["W4A4", "W8A8", "mixed[w 8,4 a 8,4]"]


def test_the_curves_share_one_legend_beside_the_panels(figures: list[Any], tmp_path: Path) -> None:
    groups = [group("ste", 2, [90.0]), group("lsq", 2, [91.0]), group("ste", 4, [93.0])]
    for g in groups:
        for run in g.done:
            run.__dict__["curves"] = {"test/acc": [(1, 80.0), (2, run.metrics["test_acc"])], "train/acc": []}
    plot_test_curves(groups, tmp_path / "curves.png")
    figures[0].canvas.draw()
    axes = [ax for ax in figures[0].axes if ax.get_visible()]
    legends = [ax.get_legend() for ax in axes if ax.get_legend()]
    assert len(legends) == 1 and [t.get_text() for t in legends[0].get_texts()] == ["lsq", "ste"]
    assert legends[0].get_window_extent().x0 > max(ax.bbox.x1 for ax in axes)
    colours = {line.get_label(): line.get_color() for ax in axes for line in ax.lines}
    assert colours == {"ste": method_style("ste")[0], "lsq": method_style("lsq")[0]}
    assert np.ptp([ax.get_ylim() for ax in axes], axis=0).tolist() == [0, 0]  # one y-axis for all panels


def test_every_curve_panel_without_one_below_numbers_its_epochs(figures: list[Any], tmp_path: Path) -> None:
    """Four widths in two rows of three: the top row's second and third panels, with none below them,
    show their epoch numbers (the shared x-axis had hidden them: those panels said "epoch" and no number)."""
    groups = [group("ste", bits, [90.0]) for bits in (1, 2, 3, 4)]
    for g in groups:
        for run in g.done:
            run.__dict__["curves"] = {"test/acc": [(1, 80.0), (2, run.metrics["test_acc"])], "train/acc": []}
    plot_test_curves(groups, tmp_path / "curves.png")
    figures[0].canvas.draw()
    numbered = {ax.get_title(): any(label.get_visible() and label.get_text() for label in ax.get_xticklabels())
                for ax in figures[0].axes if ax.get_visible()}
    assert numbered == {"W1A1": False, "W2A2": True, "W3A3": True, "W4A4": True}


@pytest.mark.parametrize(("low", "high", "plain"), [(0.68, 1.77, True), (0.0017, 0.03, True), (0.0016, 0.0926, True),
                                                    (0.0001, 0.5, False)])
def test_log_gbops_axis_is_labelled_plainly_below_three_decades(low: float, high: float, plain: bool) -> None:
    """Plain round numbers, none overlapping (the minor labels 2x10^-3, 3x10^-3, 4x10^-3 ran into each
    other on a search's axis from 0.0017 to 0.03); over three decades matplotlib's decade labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([low, high], [1, 2])
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    fig.canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high * 1.05]
    minor = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in labels]
    plt.close(fig)
    major = [t.get_text() for t in labels]
    if plain:  # a few round numbers as typed, no minor labels
        assert minor == [] and 3 <= len(major) <= 8, major
        assert all(re.fullmatch(r"[0-9.]+", text) for text in major), major
        assert [float(text) for text in major] == sorted(float(text) for text in major)
        assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), major  # none overlaps the next
    else:  # three decades or more: matplotlib's decade labels are kept
        assert all("10^" in text for text in major), major


@pytest.mark.parametrize(("starts", "marked"), [((87.78, 87.78), [87.78]), ((87.78, 87.3), []), ((None, None), [])])
def test_plots_mark_the_init_from_accuracy_only_when_every_run_shares_it(
        starts: tuple[float | None, float | None], marked: list[float]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [Run(Path(f"run{i}"), "done", {"test_acc": 85.0, **({"init_test_acc": s} if s else {})}, {}, [])
            for i, s in enumerate(starts)]
    failed = Run(Path("failed"), "failed", {"init_test_acc": 50.0}, {}, [])  # not a finished run: not counted
    fig, ax = plt.subplots()
    _mark_init_from(ax, [Group({}, {}, runs[:1]), Group({}, {}, [*runs[1:], failed])])
    assert [line.get_ydata()[0] for line in ax.lines] == marked
    assert [line.get_label() for line in ax.lines] == [f"init_from net: {m:.2f}%" for m in marked]
    plt.close(fig)
