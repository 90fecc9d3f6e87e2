"""``qnnrun report``'s groups: a mixed run's widths are its identity, and the Pareto front keeps the
groups no other beats in both accuracy and GBOPs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from report_files import write_run

from qnnrun.report import build_report
from qnnrun.report.groups import group_runs, pareto_front
from qnnrun.report.records import find_runs


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
    text = build_report([runs], tmp_path / "out")
    assert "mixed[w 8,2 a 8,2]" in text and "## By bits" not in text
    # nor an empty accuracy-vs-bits plot
    assert not (tmp_path / "out" / "accuracy_vs_bits.png").exists() and "accuracy_vs_bits" not in text
    assert (tmp_path / "out" / "accuracy_vs_gbops.png").exists() and "![accuracy_vs_gbops.png]" in text


def test_pareto_front_keeps_points_no_other_beats() -> None:
    # (GBOPs, accuracy): (2, 80) is beaten by (1, 85); (4, 85) ties the cheaper (1, 85); the two
    # (3, 90) tie each other and are both on the front.
    points = [(1.0, 85.0), (2.0, 80.0), (3.0, 90.0), (4.0, 85.0), (8.0, 91.0), (3.0, 90.0)]
    assert pareto_front(points) == [0, 2, 5, 4]
    assert pareto_front([(1.0, 85.0), (2.0, 85.0)]) == [0]  # as accurate and costlier: beaten


def test_a_seed_finished_in_two_folders_counts_once(tmp_path: Path) -> None:
    """The same seed copied into a second folder (or trained again into another sweep given with the
    first) must not weigh twice in the mean and std: the first folder by path counts, the other is
    listed as a duplicate with both accuracies."""
    for folder, seed, acc in (("a/s0", 0, 90.0), ("a/s1", 1, 80.0), ("b/s0", 0, 95.0)):
        write_run(tmp_path / folder, "ste", "fp", "fp", seed=seed, test_acc=acc, overrides=[f"seed={seed}"])
    text = build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out", plots=False)
    row = next(line for line in text.splitlines() if line.startswith("| ste "))
    assert re.search(r"\| W2A2 \| 3 +\| 2 +\| 0 +\| 85.00 ± 7.07 \|", row), row  # epochs, runs, failed
    assert "2 done" in text and "1 duplicate record" in text
    assert f"seed 0 of ste W2A2 finished here (95.00%) and in {tmp_path / 'a/s0'} (90.00%): counted once" in text


def test_an_extended_run_is_not_grouped_with_runs_planned_that_long(tmp_path: Path) -> None:
    """extend=true stretched its schedule part-way: another computation than a run planned for 5 epochs."""
    write_run(tmp_path / "planned", "ste", "fp", "fp", epochs=5, test_acc=90.0)
    write_run(tmp_path / "extended", "ste", "fp", "fp", epochs=5, test_acc=88.0,
              extensions=[{"at_epoch": 3, "epochs_before": 3, "epochs": 5}])
    groups = group_runs(find_runs([tmp_path])[0])
    assert [(g.extras, len(g.runs)) for g in groups] == [({}, 1), ({"extended": "3 to 5 at epoch 3"}, 1)]


def test_float_runs_are_one_group_whatever_quantizer_options_they_were_given(tmp_path: Path) -> None:
    """A float run reads no quant.* or bits.* key: a sweep that typed quant.first_layer=8 beside one
    that did not holds one float group (and one fp row in the bits table)."""
    for name, seed, acc, overrides in (("a", 0, 92.0, ["quant.first_layer=8"]), ("b", 1, 95.0, [])):
        write_run(tmp_path / name, "fp", 8, 8, seed=seed, test_acc=acc, bits_w=32, bits_a=32,
                  overrides=["method=fp", f"seed={seed}", *overrides])
    write_run(tmp_path / "q", "ste", 8, 8, overrides=["method=ste", "quant.first_layer=8"])
    groups = group_runs(find_runs([tmp_path])[0])
    assert [(g.identity.method, len(g.runs)) for g in groups] == [("fp", 2), ("ste", 1)]
    text = build_report([tmp_path], tmp_path / "out", plots=False)
    assert "93.50 ± 2.12 (n=2)" in text.split("## By bits")[1]


def test_a_config_group_typed_as_its_default_is_one_group_with_it(tmp_path: Path) -> None:
    """optim=sgd typed on one seed and left at the default sgd on another: one group, found by --paired."""
    for seed, overrides in ((0, ["optim=sgd"]), (1, [])):
        run = write_run(tmp_path / f"s{seed}", "ste", "fp", "fp", seed=seed, overrides=[f"seed={seed}", *overrides])
        choices = "hydra:\n  runtime:\n    choices:\n      optim: sgd\n      bits: '2'\n"
        (run / ".hydra" / "hydra.yaml").write_text(choices)
    (group,) = group_runs(find_runs([tmp_path])[0])
    assert group.extras == {"optim": "sgd"} and len(group.runs) == 2
