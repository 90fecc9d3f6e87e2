"""``qnnrun report PATH...``: one table and three plots across runs.

Every run folder under the paths is read into a validated record (:mod:`qnnrun.report.records`);
runs that differ only in their seed, and in the override keys given to ``--ignore``, form a group
(:mod:`qnnrun.report.groups`, which states the rule). Each group reports mean and sample standard
deviation over its finished runs; runs that started from a trained net (``init_from``) also the
change in final test accuracy from that net's (``vs init_from``, points: what quantization cost).
Where the quantized runs compared differ in their first/last-layer policy (``quant.first_layer`` /
``quant.last_layer``: float, 8 bits or the run's own bits; GBOPs and weight size change several-fold
with it), the report says so in a note, and tables and plot labels name each run's policy
(``first/last=fp``).

Writes into the output folder (the tables and the CSV: :mod:`qnnrun.report.tables`; the plots:
:mod:`qnnrun.report.plots`)::

    report.md                 the tables (also printed), failed, unfinished, unreadable and duplicate
                              runs with the reason (unfinished: the last epoch logged and its test
                              accuracy); with ``--epochs 1,10,30`` also test (and train) accuracy at
                              those epochs; with ``--paired method=ste`` also each group's paired
                              difference from its baseline group (:mod:`qnnrun.report.paired`)
    report.csv                one row per group: counts, mean and std of every metric
    accuracy_vs_bits.png      final test accuracy (%) against weight bits, one line per method
    accuracy_vs_gbops.png     final test accuracy (%) against GBOPs per image (log x), Pareto front
                              marked, every point labelled
    test_accuracy_curves.png  test accuracy (%) per epoch from the TensorBoard events, one panel per
                              bit width (shared axes), methods overlaid

Runs of several models or data sets are drawn apart: each plot once per model and data set, named
``accuracy_vs_bits_<model>_<dataset>.png`` and so on.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import NoReturn

from qnnrun.checkpoint import check_output_folder
from qnnrun.errors import QnnrunError, plural
from qnnrun.report.groups import Group, by_task, drop_repeated_seeds, group_runs
from qnnrun.report.paired import Selector, check_baseline, paired_table, selector_text
from qnnrun.report.plots import BITS_PLOT, PLOTS
from qnnrun.report.records import (DONE, DUPLICATE, FAILED, INVALID, UNFINISHED, Problem, Run, find_runs,
                                    identity_key_problem)
from qnnrun.report.tables import (PROBLEMS_TITLE, bits_table, epochs_table, layer_policy_note, problems_table,
                                  summary_table, write_csv)


def build_report(paths: Sequence[Path], out_dir: Path, plots: bool = True, ignore: Collection[str] = (),
                 epochs: Sequence[int] = (), paired: Sequence[Selector] = ()) -> str:
    """Read the runs under ``paths``, write report.md, report.csv and the PNGs into ``out_dir``;
    returns the report's text. Runs differing only in their seed and the override keys in
    ``ignore`` are one group; ``epochs`` (1-based) adds the table of test accuracy at those epochs;
    each selector of ``paired`` the table of paired differences from the baselines it names."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed on clusters and CI
    given: dict[Path, Path] = {}  # each folder once, as first typed
    for path in paths:
        given.setdefault(path.resolve(), path)
    paths = list(given.values())
    runs, problems = find_runs(paths)
    keys = sorted({key for run in runs for key in run.overrides})
    for key in ignore:
        if problem := identity_key_problem(key):
            raise QnnrunError(f"--ignore {key}: {problem}; give an override key, e.g. init_from")
        if key not in keys:
            raise QnnrunError(f"--ignore {key}: no run sets it; " + (f"the keys the runs set are {', '.join(keys)}"
                                                                     if keys else "the runs set no override key"))
    groups = group_runs(runs, ignore)
    repeats = drop_repeated_seeds(groups)
    repeated = {p.path for p in repeats}
    runs, problems = [r for r in runs if r.path not in repeated], [*problems, *repeats]
    finished = [g for g in groups if g.done]
    unfinished = [r for r in runs if r.status == UNFINISHED]
    waiting = {selector: check_baseline(groups, selector, keys, ignore, unfinished) for selector in paired}
    parts = [_headline(paths, runs, problems, groups, ignore), layer_policy_note(finished)]
    if groups:
        by_bits = bits_table(groups)  # empty where every group is mixed (no one bit width)
        parts += ["## Runs, mean ± std over seeds\n\n" + summary_table(groups)]
        parts += ["## By bits\n\n" + by_bits] if by_bits else []
    if epochs and finished:
        parts.append("## By epoch\n\n" + epochs_table(finished, epochs))
    for selector in paired:
        parts.append(f"## Paired with {selector_text(selector)}, by seed\n\n"
                     + (waiting[selector] or paired_table(finished, selector)))
    planned = _planned_plots(finished) if plots else {}
    check_output_folder(out_dir, "--out")
    _check_overwrites(out_dir, list(planned))
    # First a report.md that says whose the files beside it are, should the report stop before its end.
    (out_dir / "report.md").write_text(f"{HEADER}\n\n(being written)\n\n{_plots_section(planned)}\n", encoding="utf-8")
    write_csv(groups, out_dir / "report.csv")
    for name, (plot, members) in planned.items():
        plot(members, out_dir / name)
    # Last: reading the curves (epochs table, plots) may have added notes about unreadable events.
    table = problems_table(runs, problems)
    if table:
        parts.append(f"{PROBLEMS_TITLE}\n\n{table}")
    if planned:
        parts.append(_plots_section(planned))
    # Folder names that are not UTF-8 (surrogates in str(path)) are written as escapes, not refused.
    text = ("\n\n".join(filter(None, parts)) + "\n").encode("utf-8", "backslashreplace").decode("utf-8")
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    return text


def _planned_plots(groups: Sequence[Group]) -> dict[str, tuple[Callable[[Sequence[Group], Path], None], list[Group]]]:
    """File name -> (plot, its groups) of each plot the report draws: every plot once per model and data
    set, ``accuracy_vs_gbops.png`` where all share one, else ``accuracy_vs_gbops_<model>_<dataset>.png``;
    no bits plot of groups that are all mixed (no one bit width to draw them at)."""
    tasks = {task: [groups[i] for i in indices] for task, indices in by_task(groups).items()}
    suffixes = {task: "" if len(tasks) == 1 else f"_{task[0]}_{task[1]}" for task in tasks}
    return {f"{Path(name).stem}{suffixes[task]}.png": (plot, members)
            for name, plot in PLOTS.items() for task, members in sorted(tasks.items())
            if not (name == BITS_PLOT and all(g.identity.mixed for g in members))}


def _plots_section(planned: Collection[str]) -> str:
    """report.md's Plots section, showing each plot file (what tells a later report the files are its)."""
    return "## Plots\n\n" + "\n".join(f"![{name}]({name})" for name in planned) if planned else ""


def _shown_plots(text: str) -> set[str]:
    """The plot files a report.md's ``text`` shows (its Plots section)."""
    return set(re.findall(r"^!\[([^/\]]+\.png)\]\(\1\)$", text, re.MULTILINE))


# The first line of every report.md qnnrun report writes (what tells its files from a user's).
HEADER = "# qnnrun report"


def _check_overwrites(out_dir: Path, plots: Sequence[str]) -> None:
    """Refuse to write into ``out_dir`` over a file qnnrun report did not write there: a report.md that
    does not start with :data:`HEADER` (a user's notes), a report.csv or one of ``plots`` (the plot files
    this report draws) beside no such report.md, or a plot file such a report.md does not show (a plot
    of the user's own saved beside an earlier report). Then removes the plots the earlier report.md
    shows, so none is left that this report does not draw."""
    try:  # read once: its first line says whose it is, its Plots section which plots are its
        text = (out_dir / "report.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    ours = text.split("\n", 1)[0] == HEADER
    earlier = _shown_plots(text) if ours else set()
    written = ("report.md", "report.csv") if not ours else ()
    theirs = [name for name in (*written, *plots) if (out_dir / name).exists() and name not in earlier]
    if theirs:
        raise QnnrunError(f"{out_dir / theirs[0]} was not written by qnnrun report (no {HEADER!r} report.md beside "
                          f"it shows it), and the report would replace it: give another folder with --out DIR")
    for name in earlier:
        (out_dir / name).unlink(missing_ok=True)


def _headline(paths: Sequence[Path], runs: Sequence[Run], problems: Sequence[Problem], groups: Sequence[Group],
              ignore: Collection[str]) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in (DONE, FAILED, UNFINISHED)}
    duplicates, invalid = (sum(p.kind == kind for p in problems) for kind in (DUPLICATE, INVALID))
    not_runs = (f"; {plural(duplicates, 'duplicate record')} (each counted once, as the run it repeats)"
                * bool(duplicates) + f"; {plural(invalid, 'unreadable record')}" * bool(invalid))
    return (f"{HEADER}\n\n{plural(len(runs), 'run')} under {', '.join(str(p) for p in paths)}: "
            f"{counts[DONE]} done, {counts[FAILED]} failed, {counts[UNFINISHED]} unfinished{not_runs}; "
            f"{plural(len(groups), 'group')} (runs that differ only in their seed"
            + "".join(f", {key}" for key in ignore) + ").")


def _epoch_list(text: str) -> list[int]:
    """``"1,10,30"`` -> ``[1, 10, 30]``, in order, each once; anything but positive integers is an
    argparse error."""
    try:
        epochs = [int(part) for part in text.split(",")]
    except ValueError:
        epochs = []
    if not epochs or min(epochs) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected epoch numbers (from 1) separated by commas, e.g. 1,10,30")
    return sorted(set(epochs))


def _selector(text: str) -> Selector:
    """``"method=ste"`` -> ``(("method", "ste"),)``; several pairs apart by spaces name a baseline by
    all of them; anything else is an argparse error."""
    pairs = [item.partition("=") for item in text.split()]
    if not pairs or not all(sep and key and value for key, sep, value in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. method=ste or grid_point=plain, "
                                         "or several apart by spaces")
    return tuple((key, value) for key, _, value in pairs)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one QnnrunError line, like every other qnnrun command's; a flag
    it does not have is named with the flags it has."""

    def error(self, message: str) -> NoReturn:
        raise QnnrunError(f"{message} (qnnrun report --help)")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        known, unknown = self.parse_known_args(args, namespace)
        if unknown:
            flags = [flag for action in self._actions for flag in action.option_strings if flag.startswith("--")]
            raise QnnrunError(f"{unknown[0]} is not an option of qnnrun report: options are PATH... and "
                              f"{', '.join(flags)}")
        return known


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
          + (f" and the plots in {out_dir}" if "\n## Plots\n" in text else ""))  # none without finished runs
