"""``qnnrun report``'s plots stay readable across a many-method sweep (issue 38): no marker hides
another, error bars where a series has several seeds, labels that overlap nothing, legends beside
the data, and the first/last-layer policy named where the compared runs differ in it."""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from hydra_utils import run_cli

from qnnrun.errors import QnnrunError
from qnnrun.methods import METHODS
from qnnrun.report import (DPI, FRONT_CIRCLE, MARKER_SIZE, Group, Identity, Run, _config_text, build_report,
                           canonical, dodge, find_runs, group_runs, layer_policy_note, main, method_style,
                           plot_accuracy_vs_bits, plot_accuracy_vs_gbops, plot_test_curves, read_folder, shade)

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
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for figure in kept:
        figure.clear()


def marker_pixels(ax: Any) -> dict[str, list[tuple[float, float]]]:
    """Series name -> pixel centres of its markers (the lines the plots label with the series' name)."""
    return {line.get_label(): [tuple(p) for p in ax.transData.transform(line.get_xydata())]
            for line in ax.lines if not line.get_label().startswith("_")}


# --- dodge: the rule that keeps markers apart -------------------------------------------------------

def test_dodge_spreads_markers_that_would_overlap_and_leaves_the_others() -> None:
    xs = [10.0, 10.0, 10.0, 10.0, 50.0]
    lows, highs = [0.0, 1.0, 30.0, 2.0, 0.0], [5.0, 6.0, 35.0, 7.0, 5.0]  # 0, 1, 3 touch; 2 and 4 alone
    placed = dodge(xs, lows, highs, width=4.0)
    assert placed[2] == 10.0 and placed[4] == 50.0
    assert [placed[i] for i in (0, 1, 3)] == [6.0, 10.0, 14.0]  # centred on their x, in index order


def test_dodge_keeps_the_order_of_xs_and_merges_clusters_it_pushes_together() -> None:
    xs = [0.0, 1.0, 5.0, 6.0]  # two pairs; spread apart, the pairs would touch: one cluster of four
    placed = dodge(xs, [0.0] * 4, [1.0] * 4, width=3.0)
    assert placed == sorted(placed)
    assert all(b - a >= 3.0 - 1e-9 for a, b in zip(placed, placed[1:]))
    assert sum(placed) / 4 == pytest.approx(sum(xs) / 4)


def test_dodge_leaves_markers_apart_in_height_where_they_are() -> None:
    assert dodge([1.0, 1.0], [0.0, 10.0], [5.0, 15.0], width=4.0) == [1.0, 1.0]


def test_dodge_keeps_a_cluster_within_its_widest_and_its_bounds() -> None:
    placed = dodge([10.0] * 5, [0.0] * 5, [1.0] * 5, width=4.0, widest=8.0, bounds=(0.0, 100.0))
    assert placed == [6.0, 8.0, 10.0, 12.0, 14.0]  # closer than the width: 8 across at most
    placed = dodge([1.0] * 3, [0.0] * 3, [1.0] * 3, width=4.0, bounds=(0.0, 100.0))
    assert placed == [0.0, 4.0, 8.0]  # moved right to stay within the bounds


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

DONE = {"status": "done", "model": "mlp", "dataset": "digits", "bits_w": 2, "bits_a": 2, "seed": 0,
        "epochs": 3, "test_acc": 90.0, "gbops": 0.02}


def write_run(folder: Path, method: str, first: Any, last: Any, **record: Any) -> Path:
    """A finished run's folder: summary.json and the .hydra/config.yaml holding its layer policy."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({**DONE, "method": method, **record}))
    (folder / ".hydra" / "config.yaml").write_text(
        f"seed: 0\nquant:\n  first_layer: {first}\n  last_layer: {last}\n  per_channel: true\n")
    return folder


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


def test_no_note_and_no_policy_in_labels_where_the_compared_runs_share_it(tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "ste", "ste", "fp", "fp")
    write_run(tmp_path / "runs" / "dorefa", "dorefa", "fp", "fp")
    write_run(tmp_path / "runs" / "fp", "fp", 8, 8, bits_w=32, bits_a=32)  # float: the policy changes nothing
    text = build_report([tmp_path / "runs"], tmp_path / "out", plots=False)
    assert "Note" not in text and "first/last" not in text
    assert layer_policy_note([group("ste", 2, [90.0]), group("lsq", 2, [90.0], layers=None)]) == ""


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
    assert set(lines) == {"ste", "ste A8", "lsq"}
    assert lines["ste"].get_color() == method_style("ste")[0] and lines["lsq"].get_color() == method_style("lsq")[0]
    assert lines["ste A8"].get_color() not in {method_style(m)[0] for m in METHODS}
    assert lines["ste A8"].get_linestyle() != lines["ste"].get_linestyle()
    assert lines["ste A8"].get_marker() == lines["ste"].get_marker()


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


# --- paired differences from a baseline (--paired) ------------------------------------------------

def write_seeds(root: Path, name: str, method: str, accs: Sequence[float], overrides: Sequence[str] = (),
                **record: Any) -> None:
    """Finished runs of one group, seeds 0, 1, ... with the given test accuracies (%)."""
    for seed, acc in enumerate(accs):
        write_run(root / f"{name}_{seed}", method, "fp", "fp", seed=seed, test_acc=acc,
                  overrides=[f"method={method}", f"seed={seed}", *overrides], **record)


def paired_rows(text: str, key_value: str) -> list[list[str]]:
    table = text.split(f"## Paired with {key_value}, by seed\n\n")[1].split("\n\n")[0].splitlines()
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in table[2:]]


def add_method_options(runs: Path, options: dict[str, str]) -> None:
    """Append ``method:`` options (YAML lines, two spaces in) to the .hydra/config.yaml of each run under
    ``runs`` whose folder is named ``<group>_<seed>``, by its group: what a run's config holds where
    the command line left an option at its default."""
    for folder in runs.glob("*_*"):
        text = options.get(folder.name.rsplit("_", 1)[0])
        if text:
            config = folder / ".hydra" / "config.yaml"
            config.write_text(config.read_text() + "method:\n" + text)


def test_paired_differences_from_a_method_are_per_seed_and_at_equal_bits(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_seeds(runs, "ste2", "ste", [70.0, 71.0, 72.0])
    write_seeds(runs, "nbn2", "nbn", [70.5, 70.0, 73.0])
    write_seeds(runs, "nbn4", "nbn", [80.0, 80.0], bits_w=4, bits_a=4)  # no ste at 4 bits: no row
    write_seeds(runs, "ste4", "ste", [79.0, 79.0, 79.0], bits_w=4, bits_a=4, epochs=9)  # the only one: named so
    write_seeds(runs, "lsq2", "lsq", [60.0, 60.0], bits_w=2, bits_a=2, overrides=["optim.lr=0.1"])  # no such ste
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "ste"),)])
    assert paired_rows(text, "method=ste") == [
        ["nbn W2A2", "ste W2A2", "3", f"+0.17 ± {statistics.stdev([0.5, -1.0, 1.0]):.2f}", "+0.50, -1.00, +1.00",
         "2 of 3", "0 1 2"],
        ["nbn W4A4 (3 ep)", "ste W4A4 (9 ep)", "2", "+1.00 ± 0.00", "+1.00, +1.00", "2 of 2", "0 1"]]
    assert "Not paired: lsq W2A2 optim.lr=0.1 (no baseline alike in everything else)." in text


def test_a_baseline_at_the_groups_bits_comes_before_a_float_one_and_ambiguity_is_named(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_seeds(runs, "fp", "ste", [75.0, 75.0], bits_w=32, bits_a=32)  # a float run of the method compared with
    write_seeds(runs, "ste2", "ste", [70.0, 71.0])
    write_seeds(runs, "nbn2", "nbn", [71.0, 71.0])
    write_seeds(runs, "ste4", "ste", [79.0], bits_w=4, bits_a=4, epochs=3)
    write_seeds(runs, "ste4long", "ste", [79.5], bits_w=4, bits_a=4, epochs=9)
    write_seeds(runs, "nbn4", "nbn", [80.0], bits_w=4, bits_a=4, epochs=5)  # 3 or 9 epochs: neither
    write_seeds(runs, "nbn8", "nbn", [80.0, 80.5], bits_w=8, bits_a=8)  # only the float one
    (runs / "nbn8_again").mkdir()
    (runs / "nbn8_again" / "summary.json").write_text((runs / "nbn8_1" / "summary.json").read_text())
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "ste"),)])
    assert [row[:4] for row in paired_rows(text, "method=ste")] == [["nbn W2A2", "ste W2A2", "2", "+0.50 ± 0.71"]]
    assert ("Not paired: nbn W4A4 (several baselines: ste W4A4 (3 ep); ste W4A4 (9 ep)); "
            "nbn W8A8 (seed 1 finished twice).") in text




def test_a_float_baseline_pairs_with_every_width_and_seeds_pair_only_where_both_finished(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_seeds(runs, "fp", "fp", [75.0, 74.0], bits_w=32, bits_a=32)
    write_seeds(runs, "uniq2", "uniq", [72.0, 71.5, 60.0], bits_a=8)
    write_seeds(runs, "uniq4", "uniq", [74.5, 74.5], bits_w=4, bits_a=8)
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "fp"),)])
    assert [row[:6] for row in paired_rows(text, "method=fp")] == [
        ["uniq W2A8", "fp FP32", "2", "-2.75 ± 0.35", "-3.00, -2.50", "0 of 2"],
        ["uniq W4A8", "fp FP32", "2", "+0.00 ± 0.71", "-0.50, +0.50", "1 of 2"]]


def test_arms_of_an_override_pair_with_the_baseline_arm_whatever_their_length(tmp_path: Path) -> None:
    """SQ's arms: grid_point sets the epochs (4 for plain, 16 for the others)."""
    runs = tmp_path / "runs"
    arms = [("plain", 4, [58.0, 57.0]), ("sq", 16, [62.0, 63.0]), ("plain_restarts", 16, [64.0, 64.0])]
    for arm, epochs, accs in arms:
        for bits in (1, 2):
            write_seeds(runs, f"{arm}{bits}", "sq", [a + bits for a in accs], [f"grid_point={arm}"],
                        bits_w=bits, bits_a=32, epochs=epochs)
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("grid_point", "plain"),)])
    rows = paired_rows(text, "grid_point=plain")
    assert [(row[0], row[1], row[3]) for row in rows] == [
        ("sq W1A32 grid_point=plain_restarts (16 ep)", "sq W1A32 grid_point=plain (4 ep)", "+6.50 ± 0.71"),
        ("sq W1A32 grid_point=sq (16 ep)", "sq W1A32 grid_point=plain (4 ep)", "+5.00 ± 1.41"),
        ("sq W2A32 grid_point=plain_restarts (16 ep)", "sq W2A32 grid_point=plain (4 ep)", "+6.50 ± 0.71"),
        ("sq W2A32 grid_point=sq (16 ep)", "sq W2A32 grid_point=plain (4 ep)", "+5.00 ± 1.41")]


def test_a_baseline_named_by_two_keys_pairs_groups_that_differ_in_both(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """nbn against ste run with gradient clipping: the two differ in the method and in an override.
    Through the ``qnnrun`` command, which hands report its arguments as given (not as overrides)."""
    runs = tmp_path / "runs"
    write_seeds(runs, "nbn", "nbn", [80.0, 80.5])
    write_seeds(runs, "ste", "ste", [75.0, 71.0])
    write_seeds(runs, "clip", "ste", [80.25, 80.0], ["trainer.grad_clip=1.0"])
    options = ["--paired", "method=ste trainer.grad_clip=1.0", "--paired", "method=ste"]
    code, text, err = run_cli(["report", str(runs), "--out", str(tmp_path / "out"), "--no-plots", *options],
                              tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert [row[:5] for row in paired_rows(text, "method=ste trainer.grad_clip=1.0")] == [
        ["nbn W2A2", "ste W2A2 trainer.grad_clip=1", "2", "+0.12 ± 0.53", "-0.25, +0.50"],
        ["ste W2A2", "ste W2A2 trainer.grad_clip=1", "2", "-7.12 ± 2.65", "-5.25, -9.00"]]
    assert [row[:2] for row in paired_rows(text, "method=ste")] == [["nbn W2A2", "ste W2A2"]]  # the plain ste only


def test_a_key_left_at_its_default_takes_its_config_value_in_groups_and_pairs(tmp_path: Path) -> None:
    """UNIQ's one-stage arm against the default three stages: the default runs never typed
    method.stages, so their value comes from .hydra/config.yaml; typing the default changes nothing."""
    runs = tmp_path / "runs"
    write_seeds(runs, "one", "uniq", [66.0, 67.0, 68.0], ["method.stages=1"])
    write_seeds(runs, "staged", "uniq", [72.0, 72.5])
    write_run(runs / "typed_2", "uniq", "fp", "fp", seed=2, test_acc=73.0,
              overrides=["method=uniq", "seed=2", "method.stages=3"])  # the default, typed: the same group
    write_seeds(runs, "ste", "ste", [70.0, 70.0, 70.0])  # ste has no method.stages: none to take
    add_method_options(runs, {"one": "  stages: 1\n", "staged": "  stages: 3\n", "typed": "  stages: 3\n"})
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method.stages", "3"),)])
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith(("| uniq ", "| ste "))][:3]
    assert [(row[0], row[5], row[6]) for row in rows] == [("ste", "", "3"), ("uniq", "1", "3"), ("uniq", "3", "3")]
    assert [row[:5] for row in paired_rows(text, "method.stages=3")] == [
        ["uniq W2A2 method.stages=1", "uniq W2A2 method.stages=3", "3", "-5.50 ± 0.50", "-6.00, -5.50, -5.00"]]


@pytest.mark.parametrize(("config", "key", "text"), [
    ({"optim": {"lr": 0.01}}, "optim.lr", "0.01"), ({"trainer": {"grad_clip": None}}, "trainer.grad_clip", "null"),
    ({"quant": {"fold_bn": False}}, "quant.fold_bn", "false"), ({"method": {"name": "uniq"}}, "method.name", "uniq"),
    ({"sched": {"milestones": [2, 3]}}, "sched.milestones", None), ({"optim": {"lr": 0.01}}, "optim.lr.x", None),
    ({"optim": {"lr": 0.01}}, "optim", None), ({}, "init_from", None), ({"trainer": {"grad_clip": 1.0}},
    "trainer.grad_clip", "1"), ({"init_from": "${hydra:runtime.cwd}/outputs/x"}, "init_from", None)])
def test_a_default_is_spelled_as_an_override_would_be_or_not_taken(config: dict[str, Any], key: str,
                                                                    text: str | None) -> None:
    assert _config_text(config, key) == text


@pytest.mark.parametrize(("typed", "spelled"), [
    ("1e-2", "0.01"), ("0.010", "0.01"), (".5", "0.5"), ("1.", "1"), ("1.0", "1"), ("+3", "3"), ("1_000", "1000"),
    ("-2", "-2"), ("1e3", "1000"), ("-Inf", "-inf"), ("True", "true"), ("FALSE", "false"), ("NULL", "null"),
    ("plain", "plain"), ("'2'", "2"), ('"a b"', "a b"), ("003", "003"), ("[2,3]", "[2,3]"), ("a,b", "a,b"),
    ("1e", "1e"), ("${x}", "${x}")])
def test_an_override_value_has_one_spelling(typed: str, spelled: str) -> None:
    assert canonical(typed) == spelled


def test_a_methods_own_option_is_part_of_the_method_a_baseline_without_it_is_compared_with(tmp_path: Path) -> None:
    """uniq's one-stage arm beside its default and ste: ste has no method.stages, so both uniq groups
    pair with ste, the default one (which never typed it) and the typed arm alike."""
    runs = tmp_path / "runs"
    write_seeds(runs, "one", "uniq", [66.0, 67.0], ["method.stages=1"])
    write_seeds(runs, "staged", "uniq", [72.0, 72.5])
    write_seeds(runs, "ste", "ste", [70.0, 71.0])
    add_method_options(runs, {"one": "  stages: 1\n", "staged": "  stages: 3\n"})
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "ste"),)])
    assert [row[:4] for row in paired_rows(text, "method=ste")] == [
        ["uniq W2A2 method.stages=1", "ste W2A2", "2", "-4.00 ± 0.00"],
        ["uniq W2A2 method.stages=3", "ste W2A2", "2", "+1.75 ± 0.35"]]
    assert "Not paired" not in text
    # a baseline named by a method and its own option: ste, which has no stages, pairs with it too
    text = build_report([runs], tmp_path / "out2", plots=False, paired=[(("method", "uniq"), ("method.stages", "3"))])
    assert [row[:4] for row in paired_rows(text, "method=uniq method.stages=3")] == [
        ["ste W2A2", "uniq W2A2 method.stages=3", "2", "-1.75 ± 0.35"],
        ["uniq W2A2 method.stages=1", "uniq W2A2 method.stages=3", "2", "-5.75 ± 0.35"]]


def test_an_option_a_method_ignores_is_no_difference_but_one_both_read_is(tmp_path: Path) -> None:
    """AQE's rising-alpha arm beside its constant alpha and BinaryNet's STE run from one preset whose
    option block both share (as experiment=aqe_cifar10 does): bnn ignores method.alpha_end, so both
    aqe arms pair with bnn; aqe reads it, so the two aqe arms differ in it (and pair by it)."""
    runs = tmp_path / "runs"
    write_seeds(runs, "rise", "aqe", [71.0, 72.0], ["method.alpha_end=1.0"])
    write_seeds(runs, "fixed", "aqe", [69.0, 70.0])
    write_seeds(runs, "bnn", "bnn", [70.0, 70.5])
    add_method_options(runs, {group: f"  alpha: 0.5\n  alpha_end: {end}\n"
                              for group, end in [("rise", "1.0"), ("fixed", "null"), ("bnn", "null")]})
    text = build_report([runs], tmp_path / "out", plots=False,
                        paired=[(("method", "bnn"),), (("method.alpha_end", "null"),)])
    assert [row[:4] for row in paired_rows(text, "method=bnn")] == [
        ["aqe W2A2 method.alpha_end=1", "bnn W2A2", "2", "+1.25 ± 0.35"],
        ["aqe W2A2 method.alpha_end=null", "bnn W2A2", "2", "-0.75 ± 0.35"]]
    assert [row[:4] for row in paired_rows(text, "method.alpha_end=null")] == [
        ["aqe W2A2 method.alpha_end=1", "aqe W2A2 method.alpha_end=null", "2", "+2.00 ± 0.00"]]
    assert "Not paired: bnn W2A2 (bnn has no option method.alpha_end)." in text
    write_seeds(runs, "bnn_typed", "bnn", [70.0], ["method.alpha_end=1.0"])  # typed, and ignored by bnn
    with pytest.raises(QnnrunError, match=r"^--paired method.alpha_end=1.0: only runs of bnn set method.alpha_end, "
                                          r"and that method has no such option$"):
        build_report([runs / "bnn_typed_0"], tmp_path / "out3", plots=False, paired=[(("method.alpha_end", "1.0"),)])


def test_a_mixed_run_takes_no_layer_policy_from_its_config(tmp_path: Path) -> None:
    """Its layer rules override the first/last-layer policy, so the policy typed by uniform runs beside
    it is not read into its group (nor are the search variables that set its widths)."""
    runs = tmp_path / "runs"
    widths = {"features.0": {"w": 8, "a": 8}, "features.4": {"w": 2, "a": 2}}
    write_run(runs / "mixed", "lsq", 8, 8, layer_bits=widths, overrides=["method=lsq", "search.conv1=8"])
    write_run(runs / "uniform", "lsq", "same", "same", overrides=["method=lsq", "quant.first_layer=same"])
    groups = group_runs(find_runs([runs])[0])
    assert [(g.identity.mixed, g.extras) for g in groups] == [(False, {"quant.first_layer": "same"}), (True, {})]
    shutil.rmtree(runs / "uniform")  # a search alone: no bits table, and no empty heading for one
    text = build_report([runs], tmp_path / "out", plots=False)
    assert "mixed[w 8,2 a 8,2]" in text and "## By bits" not in text


def test_a_baseline_still_running_is_waited_for_and_a_missing_one_refused(tmp_path: Path) -> None:
    """Mid-sweep the baseline's runs may all be unfinished: the report is written and says so; with no
    run unfinished, a baseline no group has is a typo and refused in one line."""
    runs = tmp_path / "runs"
    write_seeds(runs, "lsq", "lsq", [72.0])
    with pytest.raises(QnnrunError, match=r"^--paired method=ste: no group has method=ste; the runs have lsq$"):
        build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "ste"),)])
    (runs / "ste_0" / ".hydra").mkdir(parents=True)
    (runs / "ste_0" / ".hydra" / "overrides.yaml").write_text("- method=ste\n")
    (runs / "ste_0" / "last.ckpt").write_bytes(b"cut before its first epoch ended")
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "ste"),)])
    assert "1 done, 0 failed, 1 unfinished; 1 group (" in text
    assert ("## Paired with method=ste, by seed\n\nNot paired yet: no group has method=ste; the runs have lsq, and "
            "1 run is unfinished (a baseline among them pairs once it finishes).") in text


def test_one_value_typed_two_ways_is_one_group_and_a_baseline_either_way(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_seeds(runs, "a", "ste", [70.0], ["optim.lr=1e-2"])
    write_run(runs / "b_1", "ste", "fp", "fp", seed=1, test_acc=71.0,
              overrides=["method=ste", "seed=1", "optim.lr=0.01"])
    write_seeds(runs, "lsq", "lsq", [72.0, 73.0], ["optim.lr=.01"])
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "ste"), ("optim.lr", "1e-2"))])
    assert "2 groups" in text  # the three spellings of 0.01 are one value (so no label names it)
    assert [row[:5] for row in paired_rows(text, "method=ste optim.lr=1e-2")] == [
        ["lsq W2A2", "ste W2A2", "2", "+2.00 ± 0.00", "+2.00, +2.00"]]


@pytest.mark.parametrize(("option", "message"), [
    ("grid_point=plain", "--paired grid_point=plain: no run sets grid_point; valid keys are method, optim.lr"),
    ("method=lsq", "--paired method=lsq: no group has method=lsq; the runs have nbn, ste"),
    ("method ste", "argument --paired: 'method ste': expected KEY=VALUE, e.g. method=ste or grid_point=plain, "
                   "or several apart by spaces (qnnrun report --help)"),
    ("method=ste x=1", "--paired x=1: no run sets x; valid keys are method, optim.lr"),
    ("method=ste optim.lr=0.1", "--paired method=ste optim.lr=0.1: no group has all of these"),
    ("optim.lr=0.1", "--paired optim.lr=0.1: optim.lr is given to --ignore too, so no group differs in it")])
def test_a_baseline_no_run_has_is_one_line_naming_the_valid_ones(option: str, message: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_seeds(runs, "ste", "ste", [70.0])
    write_seeds(runs, "nbn", "nbn", [71.0], ["optim.lr=0.1"])
    with pytest.raises(QnnrunError) as error:
        ignore = ["--ignore", "optim.lr"] if option == "optim.lr=0.1" else []
        main([str(runs), "--out", str(tmp_path / "out"), "--no-plots", "--paired", option, *ignore])
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()
