"""``qnnrun report``'s groups and ``--paired``: runs that differ only in their seed are one group, a
value has one spelling whether typed or left at its default, and each group is paired by seed with
the one baseline alike in everything else (or listed with the reason it has none)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hydra_utils import run_cli
from report_files import write_run

from qnnrun.errors import QnnrunError
from qnnrun.report import build_report, main


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
    assert ("Not paired: lsq W2A2 optim.lr=0.1 (no baseline alike in everything else; the nearest, ste W2A2, "
            "differs in optim.lr: 0.1 against unset).") in text


def test_a_seed_level_with_its_baseline_is_not_counted_above(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_seeds(runs, "ste", "ste", [70.0, 71.0])
    write_seeds(runs, "lsq", "lsq", [70.0, 72.0])
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "ste"),)])
    assert [row[4:6] for row in paired_rows(text, "method=ste")] == [["+0.00, +1.00", "1 of 2"]]


def test_paired_rows_of_several_models_name_the_model(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for model in ("mlp", "lenet5"):
        write_seeds(runs, f"ste_{model}", "ste", [70.0, 71.0], model=model)
        write_seeds(runs, f"nbn_{model}", "nbn", [71.0, 71.0] if model == "mlp" else [69.0, 70.0], model=model)
    write_run(runs / "lbl_lenet5_5", "lbl", "fp", "fp", seed=5, model="lenet5", overrides=["method=lbl", "seed=5"])
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "ste"),)])
    assert [row[:4] for row in paired_rows(text, "method=ste")] == [
        ["nbn W2A2 (lenet5, digits)", "ste W2A2 (lenet5, digits)", "2", "-1.00 ± 0.00"],
        ["nbn W2A2 (mlp, digits)", "ste W2A2 (mlp, digits)", "2", "+0.50 ± 0.71"]]
    assert "Not paired: lbl W2A2 (lenet5, digits) (no seed in common with its baseline)." in text


def test_a_baseline_at_the_groups_bits_comes_before_a_float_one_and_ambiguity_is_named(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_seeds(runs, "fp", "ste", [75.0, 75.0], bits_w=32, bits_a=32)  # a float run of the method compared with
    write_seeds(runs, "ste2", "ste", [70.0, 71.0])
    write_seeds(runs, "nbn2", "nbn", [71.0, 71.0])
    write_seeds(runs, "ste4", "ste", [79.0], bits_w=4, bits_a=4, epochs=3)
    write_seeds(runs, "ste4long", "ste", [79.5], bits_w=4, bits_a=4, epochs=9)
    write_seeds(runs, "nbn4", "nbn", [80.0], bits_w=4, bits_a=4, epochs=5)  # 3 or 9 epochs: neither
    write_seeds(runs, "nbn8", "nbn", [80.0, 80.5], bits_w=8, bits_a=8)  # only the float one
    (runs / "nbn8_again").mkdir()  # seed 1 again, in another folder: counted once
    (runs / "nbn8_again" / "summary.json").write_text((runs / "nbn8_1" / "summary.json").read_text())
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "ste"),)])
    assert [row[:4] for row in paired_rows(text, "method=ste")] == [["nbn W2A2", "ste W2A2", "2", "+0.50 ± 0.71"],
                                                                    ["nbn W8A8", "ste FP32", "2", "+5.25 ± 0.35"]]
    assert "Not paired: nbn W4A4 (several baselines: ste W4A4 (3 ep); ste W4A4 (9 ep))." in text


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


def test_an_unpaired_group_names_what_its_nearest_baseline_differs_in(tmp_path: Path) -> None:
    """A preset's grid point (experiment=aqe_cifar10) sets the method and the bits, so aqe's and bnn's runs
    differ in it too: the reason names it, and a baseline named by both keys pairs."""
    runs = tmp_path / "runs"
    write_seeds(runs, "aqe", "aqe", [47.0, 48.0], ["grid_point=aqe_w1a1"], bits_w=1, bits_a=1)
    write_seeds(runs, "bnn", "bnn", [58.0, 58.5], ["grid_point=bnn_w1a1"], bits_w=1, bits_a=1)
    both = (("method", "bnn"), ("grid_point", "bnn_w1a1"))
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "bnn"),), both])
    assert ("Not paired: aqe W1A1 grid_point=aqe_w1a1 (no baseline alike in everything else; the nearest, bnn W1A1, "
            "differs in grid_point: aqe_w1a1 against bnn_w1a1).") in text
    assert [row[:5] for row in paired_rows(text, "method=bnn grid_point=bnn_w1a1")] == [
        ["aqe W1A1 grid_point=aqe_w1a1", "bnn W1A1 grid_point=bnn_w1a1", "2", "-10.75 ± 0.35", "-11.00, -10.50"]]
    # A bnn run is W1A1 whatever its bits (a record saying W4A4 is refused): qnn's widths differ.
    write_seeds(tmp_path / "qnn", "qnn", "qnn", [59.0, 59.5], ["grid_point=qnn_w1a1"], bits_w=1, bits_a=1)
    write_seeds(tmp_path / "qnn", "qnn4", "qnn", [60.0, 60.0], ["grid_point=qnn_w4a4"], bits_w=4, bits_a=4)
    text = build_report([tmp_path / "qnn"], tmp_path / "out_qnn", plots=False,
                        paired=[(("method", "qnn"), ("grid_point", "qnn_w1a1"))])
    assert ("qnn W4A4 grid_point=qnn_w4a4 (no baseline alike in everything else; the nearest, qnn W1A1, differs "
            "in bits: W4A4 against W1A1)") in text


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
    # An unfinished run that can never be the baseline (it typed another value) does not stand in for a typo:
    # --paired teacher=none for null, say, with a run of teacher=null still training, was "not paired yet".
    with pytest.raises(QnnrunError, match=r"^--paired method=dorefa: no group has method=dorefa; the runs have lsq$"):
        build_report([runs], tmp_path / "out2", plots=False, paired=[(("method", "dorefa"),)])
    assert not (tmp_path / "out2").exists()
    (runs / "ste_0" / ".hydra" / "overrides.yaml").write_text("- method=ste\n- optim.lr=0.1\n")  # an override key
    write_seeds(runs, "lsq_lr", "lsq", [73.0], ["optim.lr=0.01"])
    with pytest.raises(QnnrunError, match=r"^--paired optim.lr=0.5: no group has optim.lr=0.5; the runs have 0.01$"):
        build_report([runs], tmp_path / "out3", plots=False, paired=[(("optim.lr", "0.5"),)])
    text = build_report([runs], tmp_path / "out4", plots=False, paired=[(("optim.lr", "0.1"),)])
    assert "Not paired yet: no group has optim.lr=0.1; the runs have 0.01, and 1 run is unfinished" in text


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


@pytest.mark.parametrize(("args", "message"), [
    (["--paired", "grid_point=plain"], "--paired grid_point=plain: no run sets grid_point; valid keys are method, "
                                       "optim.lr"),
    (["--paired", "method=lsq"], "--paired method=lsq: no group has method=lsq; the runs have nbn, ste"),
    (["--paired", "method ste"], "argument --paired: 'method ste': expected KEY=VALUE, e.g. method=ste or "
                                 "grid_point=plain, or several apart by spaces (qnnrun report --help)"),
    (["--paired", "method=ste x=1"], "--paired x=1: no run sets x; valid keys are method, optim.lr"),
    (["--paired", "method=ste optim.lr=0.1"], "--paired method=ste optim.lr=0.1: no group has all of these"),
    (["--paired", "optim.lr=0.1", "--ignore", "optim.lr"],
     "--paired optim.lr=0.1: optim.lr is given to --ignore too, so no group differs in it"),
    (["--paired", "bits=2"], "--paired bits=2: bits is part of what a group is (data set, model, method, bits, epochs, "
                             "per-layer widths), not an override to group over or pair by; valid keys are method, "
                             "optim.lr"),
    (["--paired", "seed=0"], "--paired seed=0: runs are grouped, and paired, over their seeds already; valid keys are "
                             "method, optim.lr"),
    (["--ignore", "seed"], "--ignore seed: runs are grouped, and paired, over their seeds already; give an override "
                           "key, e.g. init_from"),
    (["--ignore", "method"], "--ignore method: method is part of what a group is (data set, model, method, bits, "
                             "epochs, per-layer widths), not an override to group over or pair by; give an override "
                             "key, e.g. init_from"),
    (["--ignore", "bits.w"], "--ignore bits.w: bits.w is part of what a group is (data set, model, method, bits, "
                             "epochs, per-layer widths), not an override to group over or pair by; give an override "
                             "key, e.g. init_from")])
def test_a_baseline_or_grouping_key_no_run_has_is_one_line_naming_the_valid_ones(args: list[str], message: str,
                                                                                   tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_seeds(runs, "ste", "ste", [70.0])
    write_seeds(runs, "nbn", "nbn", [71.0], ["optim.lr=0.1"])
    with pytest.raises(QnnrunError) as error:
        main([str(runs), "--out", str(tmp_path / "out"), "--no-plots", *args])
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()


def test_runs_of_one_seed_from_two_ignored_values_both_count_and_pair_by_them(tmp_path: Path) -> None:
    """``--ignore init_from`` groups over the float net like over the seed: two runs of seed 0 from two
    float nets are two runs of the group (not one and a duplicate), and each pairs with the baseline's
    run from its own float net; a seed typed twice from one float net is still one run."""
    runs = tmp_path / "runs"
    for net, ste, fp in (("a", 80.0, 82.0), ("b", 84.0, 85.0)):
        for method, acc in (("ste", ste), ("fp", fp)):
            write_run(runs / f"{method}_{net}", method, "fp", "fp", seed=0, test_acc=acc,
                      overrides=[f"method={method}", f"init_from={net}/last.ckpt"])
    write_run(runs / "ste_b_copy", "ste", "fp", "fp", seed=0, test_acc=84.5,
              overrides=["method=ste", "init_from=b/last.ckpt"])
    text = build_report([runs], tmp_path / "out", plots=False, paired=[(("method", "fp"),)], ignore=["init_from"])
    assert "4 done" in text and "1 duplicate record" in text
    assert ("seed 0, init_from=b/last.ckpt of ste W2A2 finished here (84.50%) and in "
            f"{runs / 'ste_b'} (84.00%): counted once, there") in text
    assert paired_rows(text, "method=fp") == [
        ["ste W2A2", "fp W2A2", "2", "-1.50 ± 0.71", "-2.00, -1.00", "0 of 2",
         "0 (init_from=a/last.ckpt) 0 (init_from=b/last.ckpt)"]]
