"""The run folder's rules (qnnrun/runs.py), through the ``qnnrun train`` command: a resume continues
the same run with its own config, extensions are explicit and recorded, a finished run is never
overwritten, a single run that fails validation leaves nothing, a sweep trains each distinct run once;
a run's folder name says what the run is."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra_utils import compose_config, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from qnnrun.checkpoint import load_checkpoint
from qnnrun.data import DataInfo
from qnnrun.methods import build_method
from qnnrun.runs import (NAME_LENGTH, bounded_name, name_parts, remove_if_disposable, run_folder_name, run_identity,
                         summary_record)

FAST = ["trainer.progress=false", "trainer.num_threads=1"]


@pytest.fixture
def qnnrun(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    return lambda *args: run_cli(list(args), tmp_path, capsys, monkeypatch)


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_resume_that_changes_the_run_is_refused_and_leaves_the_run_untouched(qnnrun, tmp_path: Path) -> None:
    code, _, err = qnnrun("train", "trainer.epochs=3", "hydra.run.dir=outputs/r3", *FAST)
    assert code == 0, err
    run = tmp_path / "outputs/r3"
    before = _files(run)
    refusals = {
        ("trainer.epochs=2",): "trainer.epochs=2 cannot be given with resume=outputs/r3",  # shorter: issue 35.1
        ("trainer.epochs=5",): "extend=true",  # longer, but not asked for
        ("init_from=outputs/r3/last.ckpt",): "init_from=outputs/r3/last.ckpt cannot be given with resume",  # 35.2
        # The run's setting as overrides, where it printed a Python dict ("its method is {'name': 'ste'}").
        ("method=lsq",): "method=lsq cannot be given with resume=outputs/r3: a resume continues the run with its own "
                         "config (the run's method=ste);",
        ("bits=2",): "bits=2 cannot be given with resume=outputs/r3: a resume continues the run with its own config "
                     "(the run's bits.w=4 bits.a=4);",
        ("optim.lr=0.5",): "(the run's optim.lr=0.1);",
        ("trainer.epochs=2", "extend=true"): "extend=true needs trainer.epochs above the run's 3",
    }
    for extra, message in refusals.items():
        code, _, err = qnnrun("train", "resume=outputs/r3", *extra)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    # resume=true composes the config from the command line: a different run there is refused too.
    code, _, err = qnnrun("train", "hydra.run.dir=outputs/r3", "resume=true", "trainer.epochs=3", "bits=2", *FAST)
    assert code == 1 and "its bits.a was 4, this run has 2" in err, err
    # Per-layer widths are one value: rules added, or changed, are another run.
    code, _, err = qnnrun("train", "hydra.run.dir=outputs/r3", "resume=true", "trainer.epochs=3",
                          "quant.layer_bits={fc1: 8}", *FAST)
    assert code == 1 and "its quant.layer_bits was null, this run has {fc1: 8}" in err, err
    assert _files(run) == before  # nothing rewritten: records, checkpoints, .hydra/, log
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["r3"]  # and nothing left beside it


def test_resume_path_takes_the_runs_own_config_and_an_extension_is_recorded(qnnrun, tmp_path: Path) -> None:
    code, _, err = qnnrun("train", "model=lenet5", "bits=3", "trainer.epochs=2", "hydra.run.dir=outputs/run", *FAST)
    assert code == 0, err
    run = tmp_path / "outputs/run"
    hydra_files = _files(run / ".hydra")
    # Nothing to do for a finished run; free settings may be given anew (issue 35.3: no need to type
    # model=lenet5 bits=3 again).
    code, out, err = qnnrun("train", "resume=outputs/run", "trainer.device=cpu")
    assert code == 0 and "nothing to do" in out, err
    code, _, err = qnnrun("train", "resume=outputs/run", "trainer.epochs=4", "extend=true", "trainer.device=cpu",
                          *FAST)
    assert code == 0, err
    summary = _summary(run)
    assert (summary["model"], summary["bits_w"], summary["epochs"]) == ("lenet5", 3, 4)
    assert summary["extensions"] == [{"at_epoch": 2, "epochs_before": 2, "epochs": 4}]
    assert summary["overrides"] == ["resume=outputs/run", "trainer.epochs=4", "extend=true", "trainer.device=cpu",
                                    *FAST]
    assert summary["run_dir"] == str(run.resolve())  # issue 35.8
    history = load_checkpoint(run)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert _files(run / ".hydra") == hydra_files  # the run's own config and overrides, as it wrote them
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["run"]
    # extend=true without a resume would have trained a new run in a new folder, the extension not made.
    code, _, err = qnnrun("train", "trainer.epochs=6", "extend=true", *FAST)
    assert code == 1 and err.strip() == (
        "qnnrun: error: extend=true lengthens a run it resumes: give resume=RUN_FOLDER (or resume=true in the run's "
        "folder) with the longer trainer.epochs; without it a new run would start"), err
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["run"]


def test_a_run_of_no_epochs_keeps_its_model_for_eval_export_and_a_longer_run(qnnrun, tmp_path: Path) -> None:
    """trainer.epochs=0 (from init_from: post-training quantization) evaluated the calibrated model and
    kept nothing of it: eval and export found no checkpoint, nor could the run be lengthened."""
    code, _, err = qnnrun("train", "trainer.epochs=0", "hydra.run.dir=outputs/ptq", *FAST)
    assert code == 0, err
    run = tmp_path / "outputs/ptq"
    assert (run / "last.ckpt").is_file() and load_checkpoint(run)["epoch"] == 0
    assert load_checkpoint(run)["best_acc"] == _summary(run)["test_acc"]  # what a longer run must beat
    code, out, err = qnnrun("eval", "checkpoint=outputs/ptq")
    assert code == 0 and f"top-1 {_summary(run)['test_acc']:.2f}%" in out, err
    code, _, err = qnnrun("train", "resume=outputs/ptq", "trainer.epochs=1", "extend=true", *FAST)
    assert code == 0, err
    assert _summary(run)["extensions"] == [{"at_epoch": 0, "epochs_before": 0, "epochs": 1}]


@pytest.mark.parametrize("method", [["method=uniq"], ["method=nbn"], ["method=sq"],
                                    ["method=aqe", "method.alpha_end=1.0"]])
def test_a_method_with_a_schedule_over_the_epochs_is_not_extended(qnnrun, tmp_path: Path, method: list[str]) -> None:
    """Its stages / progression / ratios / alpha would be laid out again over the new length (UNIQ went
    back to its first stage): refused, the finished run untouched."""
    code, _, err = qnnrun("train", *method, "trainer.epochs=1", "hydra.run.dir=outputs/run", *FAST)
    assert code == 0, err
    run = tmp_path / "outputs/run"
    before = _files(run)
    code, _, err = qnnrun("train", "resume=outputs/run", "trainer.epochs=2", "extend=true", *FAST)
    assert code == 1 and "over the run's 1 epochs, and extend=true would lay it out again over 2" in err, err
    assert len(err.strip().splitlines()) == 1
    assert _files(run) == before


def test_while_an_extension_trains_its_folder_reads_as_unfinished(qnnrun, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The finished run's summary.json no longer tells the folder's state once extend=true trains on:
    it is kept as summary.previous.json, so a report (or a failure) never shows the old "done"."""
    from qnnrun import engine

    code, _, err = qnnrun("train", "trainer.epochs=1", "hydra.run.dir=outputs/run", *FAST)
    assert code == 0, err
    run = tmp_path / "outputs/run"
    seen = []
    train_epoch = engine._Loop.train_epoch

    def spy(loop, epoch, stop):
        previous = json.loads((run / "summary.previous.json").read_text())
        seen.append(((run / "summary.json").exists(), previous["epochs"]))
        return train_epoch(loop, epoch, stop)

    monkeypatch.setattr(engine._Loop, "train_epoch", spy)
    code, _, err = qnnrun("train", "resume=outputs/run", "trainer.epochs=2", "extend=true", *FAST)
    assert code == 0, err
    assert seen == [(False, 1)]
    assert (_summary(run)["status"], _summary(run)["epochs"]) == ("done", 2)


def test_a_run_folder_trains_in_one_process_at_a_time(qnnrun, tmp_path: Path) -> None:
    """The same resume started twice must not train beside itself: the second is refused while the
    first holds the folder's lock, and goes on once it is released (as when the first process ends)."""
    from qnnrun.runs import lock_run_dir

    code, _, err = qnnrun("train", "trainer.epochs=1", "hydra.run.dir=outputs/run", *FAST)
    assert code == 0, err
    run = tmp_path / "outputs/run"
    held = lock_run_dir(run)
    code, _, err = qnnrun("train", "resume=outputs/run", "trainer.epochs=2", "extend=true", *FAST)
    assert code == 1 and "outputs/run is being trained by process" in err and len(err.strip().splitlines()) == 1, err
    assert _summary(run)["epochs"] == 1 and not (run / "summary.previous.json").exists()
    held.close()
    code, _, err = qnnrun("train", "resume=outputs/run", "trainer.epochs=2", "extend=true", *FAST)
    assert code == 0 and _summary(run)["epochs"] == 2, err


def test_a_fresh_run_never_writes_into_a_folder_holding_a_run(qnnrun, tmp_path: Path) -> None:
    code, _, err = qnnrun("train", "trainer.epochs=1", "hydra.run.dir=outputs/run", *FAST)
    assert code == 0, err
    before = _files(tmp_path / "outputs/run")
    code, _, err = qnnrun("train", "trainer.epochs=1", "method=lsq", "hydra.run.dir=outputs/run", *FAST)
    assert code == 1 and "already holds a run" in err and "qnnrun train resume=outputs/run" in err, err
    assert _files(tmp_path / "outputs/run") == before


# Checked in the config (test_cli checks many more such values leave no folder), and found missing
# only once the run has started: the data set, the checkpoints.
@pytest.mark.parametrize("bad", ["bits.w=0", "dataset=mnist", "init_from=nowhere.ckpt", "resume=nowhere"])
def test_a_single_run_that_fails_validation_leaves_nothing(qnnrun, tmp_path: Path, bad: str) -> None:
    (tmp_path / "outputs" / "kept").mkdir(parents=True)  # the user's, beside the runs
    code, _, err = qnnrun("train", bad, *FAST)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["kept"]  # not even the date folder
    code, _, err = qnnrun("train", bad, "hydra.run.dir=new/run", *FAST)
    assert code == 1 and not (tmp_path / "new").exists()


def test_a_sweep_job_that_fails_keeps_its_record_and_a_float_run_trains_once(qnnrun, tmp_path: Path) -> None:
    sweep = ["train", "-m", "method=fp", "bits=2,4", "seed=0,1", "trainer.epochs=1", "hydra.sweep.dir=sweep", *FAST]
    code, _, err = qnnrun(*sweep)
    assert code == 0, err
    records = {path.parent.name: json.loads(path.read_text()) for path in (tmp_path / "sweep").glob("*/summary.json")}
    assert len(records) == 4
    done = {name for name, r in records.items() if r["status"] == "done"}
    assert len(done) == 2  # one float run per seed, not per bit width (issue 35.7)
    for name, record in records.items():
        if record["status"] == "duplicate":
            first = Path(record["same_as"])
            assert first.name in done and records[first.name]["seed"] == record["seed"]
            assert not (tmp_path / "sweep" / name / "last.ckpt").exists()
    # resume=true skips the finished jobs and keeps the duplicates pointing at their first
    code, _, err = qnnrun(*sweep, "resume=true")
    assert code == 0, err
    again = {path.parent.name: json.loads(path.read_text()) for path in (tmp_path / "sweep").glob("*/summary.json")}
    assert again == records
    # a failing job of a sweep keeps its record (with its overrides and folder)
    code, _, err = qnnrun("train", "-m", "method=fp", "bits.w=32,0", "trainer.epochs=1", "hydra.sweep.dir=bad", *FAST)
    assert code == 1
    [failed] = [json.loads(p.read_text()) for p in (tmp_path / "bad").glob("*/summary.json")
                if json.loads(p.read_text())["status"] == "failed"]
    assert "bits.w=0" in failed["error"] and "bits.w=0" in failed["overrides"]
    assert Path(failed["run_dir"]).parent == (tmp_path / "bad").resolve()


def test_a_resumed_duplicate_whose_first_run_is_no_longer_its_run_trains_anew(qnnrun, tmp_path: Path) -> None:
    """A duplicate record stands on resume only while every option both runs hold is equal: resumed
    with optim.lr changed, the float job claims its run again and trains it, not pointing at the old run."""
    sweep = ["train", "-m", "method=fp", "bits=2,4", "trainer.epochs=1", "hydra.sweep.dir=sweep",
             "hydra.sweep.subdir=${hydra.job.num}", *FAST]  # the folders keep their names when lr changes
    code, _, err = qnnrun(*sweep)
    assert code == 0, err
    first, job = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"
    assert (_summary(job)["status"], _summary(job)["same_as"]) == ("duplicate", str(first.resolve()))
    code, _, err = qnnrun(*sweep, "optim.lr=0.05", "resume=true")
    assert code == 1 and "its optim.lr was 0.1, this run has 0.05" in err, err  # job 0 is finished, at 0.1
    assert _summary(job)["status"] == "done" and "same_as" not in _summary(job)
    assert load_checkpoint(job)["config"]["optim"]["lr"] == 0.05
    assert load_checkpoint(first)["config"]["optim"]["lr"] == 0.1


def test_a_float_runs_identity_keeps_its_batchnorm_reestimation() -> None:
    """The loop re-estimates BatchNorm in a float run too: 0 and 10 batches compute different runs, never
    merged as duplicates; the bits and quantizer options a float run does not use are left out."""
    def identity(*overrides: str) -> str:
        cfg = compose_config(["method=fp", *overrides])
        return run_identity(OmegaConf.to_container(cfg, resolve=True), build_method(cfg).quantizes)

    assert identity("quant.bn_reestimate_batches=0") != identity("quant.bn_reestimate_batches=10")
    assert identity("bits=2", "quant.first_layer=8") == identity("bits=4")


def test_the_summarys_throughput_is_weighted_by_each_epochs_time() -> None:
    """images_per_s is all images over all training time: 100 img/s for 1 s and 300 img/s for 3 s make
    250, not the plain mean of the epochs' 200."""
    cfg = compose_config(["method=fp", "trainer.epochs=2"])
    history = [{"epoch": 1, "test_acc": 50.0, "test_loss": 1.0, "epoch_time_s": 1.0, "images_per_s": 100.0},
               {"epoch": 2, "test_acc": 60.0, "test_loss": 0.9, "epoch_time_s": 3.0, "images_per_s": 300.0}]
    cost = {"bops": 1e9, "macs": 1e9, "bit_macs": 32e9, "weight_memory_mb": 1.0, "compression": 1.0}
    summary = summary_record(cfg, build_method(cfg), DataInfo("digits", 1, 8, 10, 1437, 360), history, 60.0, cost,
                             None)
    assert summary["train_time_s"] == 4.0
    assert summary["images_per_s"] == pytest.approx(250.0)


def test_a_single_runs_folder_says_what_the_run_is(qnnrun, tmp_path: Path) -> None:
    code, _, err = qnnrun("train", "bits.a=8", "model.widths=[32,16]", "trainer.epochs=0", *FAST)
    assert code == 0, err
    [run] = [p.parent for p in (tmp_path / "outputs").glob("*/*/summary.json")]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", run.parent.name), run
    assert re.fullmatch(r"\d\d-\d\d-\d\d_ste_w4a8_model.widths-32-16_trainer.epochs-0", run.name), run


def test_run_folder_names_put_method_bits_and_seed_first_and_shorten_paths() -> None:
    assert run_folder_name("12-00-00", "ste", 4, 4, []) == "12-00-00_ste_w4a4"
    assert run_folder_name("12-00-00", "fp", 4, 4, ["bits=4"]) == "12-00-00_fp"  # a float run has no bits
    assert run_folder_name("12-00-00", "bnn", 4, 4, ["bits=4"]) == "12-00-00_bnn_w1a1"  # what it runs at
    old_job = "outputs/multirun/d/t/0_bits='2',method=fp"  # quoted, as qnnrun's quote_paths passes it to Hydra
    given = ["trainer.num_threads=1", "resume=true", "paths.data_dir=/data", "optim.lr=0.05", "model=resnet20",
             "seed=1", "bits=2", "method=lsq", f'init_from="{old_job}/last.ckpt"']
    assert run_folder_name("12-00-00", "lsq", 2, 2, given) == \
        "12-00-00_lsq_w2a2_seed1_init_from-0_bits-2-method-fp_resnet20_optim.lr-0.05"


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=20), st.one_of(
    st.text(max_size=300), st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=5)),
    max_size=12))
def test_folder_names_are_safe_and_bounded(named: dict) -> None:
    """Any settings make a name of letters, digits and ``_ . + -`` within NAME_LENGTH characters; two
    sets of settings that differ only past that length still get different names."""
    name = bounded_name("3", name_parts(named))
    assert re.fullmatch(r"[A-Za-z0-9_.+-]+", name) and len(name) <= NAME_LENGTH, name
    long = {f"key{i}": "value" for i in range(20)}
    assert bounded_name("3", name_parts(long)) != bounded_name("3", name_parts({**long, "key19": "other"}))


def test_layer_rules_in_another_order_are_another_run(tmp_path: Path) -> None:
    """The first matching rule wins, so the same rules in another order may set other widths."""
    from qnnrun.errors import QnnrunError
    from qnnrun.runs import check_resume_config

    def config(rules):
        return {"quant": {"layer_bits": rules}}

    check_resume_config(config({"a*": 8, "b": 4}), config({"a*": 8, "b": 4}), tmp_path)
    with pytest.raises(QnnrunError, match="its quant.layer_bits was"):
        check_resume_config(config({"a*": 8, "ab": 4}), config({"ab": 4, "a*": 8}), tmp_path)


def test_a_failed_runs_leftovers_go_but_never_the_working_folder_or_above(tmp_path: Path) -> None:
    def hydra_leftovers(folder: Path) -> Path:
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text("{}")
        (folder / "train.log").write_text("")
        return folder

    run_dir = hydra_leftovers(tmp_path / "outputs" / "2026-12-07" / "10-00-00")
    assert remove_if_disposable(run_dir, keep=tmp_path)
    assert not (tmp_path / "outputs").exists() and tmp_path.is_dir()  # the empty parents went too, up to keep
    hydra_leftovers(tmp_path)  # a run that wrote into the working folder itself (hydra.run.dir=.)
    assert not remove_if_disposable(tmp_path, keep=tmp_path)
    assert not remove_if_disposable(tmp_path, keep=tmp_path / "sub")
    assert (tmp_path / "train.log").is_file()
