"""The accuracy-vs-BOPs search (``hydra/sweeper=search``, ``experiment=mp_search``) on digits: trials
train mixed-precision runs, the study lives in the sweep folder and continues with ``resume=true``."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from hydra_utils import run_cli

from qnnrun.checkpoint import load_checkpoint
from qnnrun.errors import Interrupted
from qnnrun.methods import Method

optuna = pytest.importorskip("optuna")

SEARCH = ["train", "experiment=mp_search", "trainer.epochs=1", "trainer.num_threads=1"]


def _study(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="qnnrun", storage=f"sqlite:///{sweep / 'optuna.db'}")


def _summaries(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}


def test_a_search_stores_its_study_and_continues_it_with_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = tmp_path / "search"
    code, _, err = run_cli([*SEARCH, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"], tmp_path, capsys,
                           monkeypatch)
    assert code == 0, err
    study = _study(sweep)
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    summaries = _summaries(sweep)
    assert len(summaries) == 3
    for trial in study.trials:
        # Each trial's objectives are its run's test accuracy and GBOPs; its folder names its widths.
        folder = next(name for name in summaries if name.startswith(f"{trial.number}_"))
        summary = summaries[folder]
        if summary["status"] == "duplicate":
            summary = json.loads((Path(summary["same_as"]) / "summary.json").read_text())
        assert trial.values == [pytest.approx(summary["test_acc"]), pytest.approx(summary["gbops"])]
        assert summary["layer_bits"]["features.4"] == {"w": trial.params["search.features_4"],
                                                       "a": trial.params["search.features_4"]}

    # Run again without resume: refused in one line, nothing changed.
    code, _, err = run_cli([*SEARCH, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"], tmp_path, capsys,
                           monkeypatch)
    assert code != 0 and "continue it with resume=true" in err and len(_study(sweep).trials) == 3

    # A trial cut off (still RUNNING in the study) is run again; ended trials count toward n_trials.
    cut = _study(sweep).ask()
    cut_params = {name: cut.suggest_categorical(name, [2, 3, 4, 8]) for name in
                  ("search.features_1", "search.features_4", "search.classifier")}
    code, _, err = run_cli([*SEARCH, "hydra.sweeper.n_trials=5", f"hydra.sweep.dir={sweep}", "resume=true"],
                           tmp_path, capsys, monkeypatch)
    assert code == 0, err
    states = [t.state.name for t in _study(sweep).trials]
    assert states.count("COMPLETE") == 5 and states.count("FAIL") == 1, states  # 3 + 2 new; the cut one failed
    assert len(_summaries(sweep)) == 5
    assert [t.params for t in _study(sweep).trials if t.number > cut.number][0] == cut_params


def test_a_search_whose_first_trials_all_fail_stops_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = tmp_path / "search"
    code, _, err = run_cli([*SEARCH, f"hydra.sweep.dir={sweep}", f"trainer.distill.teacher={tmp_path / 'none'}"],
                           tmp_path, capsys, monkeypatch)
    assert code == 1 and err.strip().splitlines()[-1] == (
        "qnnrun: error: 3 trials failed and none of the search has completed (their summary.json and the log say "
        "why): fix what they share outside the command (data, files), then continue with resume=true; a changed "
        "setting is a new search (another hydra.sweep.dir)")
    assert [t.state.name for t in _study(sweep).trials] == ["FAIL"] * 3
    statuses = [s["status"] for s in _summaries(sweep).values()]
    assert "failed" in statuses and set(statuses) <= {"failed", "duplicate"}  # a trial may redraw a failed one
    for record in _summaries(sweep).values():  # a failed mixed trial's record has its real widths, as a done one
        if record["status"] == "failed":
            assert list(record["layer_bits"]) == ["features.1", "features.4", "classifier"]
            assert record["layer_bits"]["features.1"]["a"] == 8  # the image input stays at 8 bits
    folders = sorted(_summaries(sweep))
    resume = [*SEARCH, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}",
              f"trainer.distill.teacher={tmp_path / 'none'}", "resume=true"]

    # Continued before the fix: the failed trials run again, fail again and stop it again. As no trial of
    # the search has completed, they are not failed for good: the fault may be the one they share.
    code, _, err = run_cli(resume, tmp_path, capsys, monkeypatch)
    assert code == 1 and err.strip().splitlines()[-1].startswith("qnnrun: error: 3 trials failed and none of the")
    assert [t.state.name for t in _study(sweep).trials] == ["FAIL"] * 6 and sorted(_summaries(sweep)) == folders

    # The fix (the teacher file made), then the same command continues: the failed trials run again in
    # their own folders, and nothing is left failed.
    code, _, err = run_cli(["train", "method=fp", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'none'}"], tmp_path,
                           capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli(resume, tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert sorted(_summaries(sweep)) == folders
    assert {s["status"] for s in _summaries(sweep).values()} <= {"done", "duplicate"}
    assert [t.state.name for t in _study(sweep).trials] == ["FAIL"] * 6 + ["COMPLETE"] * 3


def test_a_failed_trial_runs_again_once_and_then_leaves_its_place_to_new_trials(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """9 bits fails on every resume. NSGA-II (seed 0) draws features.1=9 for trials 0, 3 and 4, 2 for
    1 and 2. The resume stopped as if the search's first 3 trials had failed (it counted its own first
    3: the failed ones run again), and every later resume ran them again: they piled up in the study."""
    sweep = tmp_path / "search"
    command = [*SEARCH, "search.features_1=choice(2,9)", f"hydra.sweep.dir={sweep}"]

    def states() -> list[tuple[str, int]]:
        return [(t.state.name, t.params["search.features_1"]) for t in _study(sweep).trials]

    code, _, err = run_cli([*command, "hydra.sweeper.n_trials=5"], tmp_path, capsys, monkeypatch)
    assert code == 1 and "3 job(s) of the sweep failed" in err, err
    assert states() == [("FAIL", 9), ("COMPLETE", 2), ("COMPLETE", 2), ("FAIL", 9), ("FAIL", 9)]  # the case
    folders = sorted(_summaries(sweep))

    # The failed trials run again once, in their own folders; failing again, they do not stop the search.
    code, _, err = run_cli([*command, "hydra.sweeper.n_trials=5", "resume=true"], tmp_path, capsys, monkeypatch)
    assert code == 1 and "3 job(s) of the sweep failed" in err and "trials of the search failed" not in err, err
    assert states()[5:] == [("FAIL", 9)] * 3 and sorted(_summaries(sweep)) == folders
    # Failed twice, they are failed for good and count toward n_trials: the search has its 5 trials.
    code, out, err = run_cli([*command, "hydra.sweeper.n_trials=5", "resume=true"], tmp_path, capsys, monkeypatch)
    assert code == 1 and "2 trials completed, 3 failed again after a failure (not run again), 0 cut off or " \
        "failed run again, 0 to go" in out + err, out + err
    assert len(states()) == 8
    # More trials are new ones, in new folders; none of the failed ones runs again.
    code, out, err = run_cli([*command, "hydra.sweeper.n_trials=7", "resume=true"], tmp_path, capsys, monkeypatch)
    assert "0 cut off or failed run again, 2 to go" in out + err, out + err
    assert len(states()) == 10 and len(_summaries(sweep)) == 7
    assert _study(sweep).user_attrs["qnnrun_run_again"] == [0, 3, 4]


@pytest.mark.slow
def test_trials_a_cut_resume_queued_run_in_their_own_folders(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume queues the failed trials to run again (optuna WAITING trials) and marks them run again;
    cut off before they started, they were left queued, and the next resume, finding nothing to queue,
    let optuna run them in new job folders beside their own. Here the cut resume is written into the
    study as it leaves it (NSGA-II, seed 0: trials 0, 3 and 4 draw features.1=9, which fails)."""
    sweep = tmp_path / "search"
    command = [*SEARCH, "search.features_1=choice(2,9)", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=5"]
    code, _, err = run_cli(command, tmp_path, capsys, monkeypatch)
    assert code == 1 and "3 job(s) of the sweep failed" in err, err
    folders = sorted(_summaries(sweep))
    study = _study(sweep)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    for trial in failed:
        study.enqueue_trial(trial.params)
    study.set_user_attr("qnnrun_run_again", [t.number for t in failed])
    assert [t.state.name for t in _study(sweep).trials][5:] == ["WAITING"] * 3

    code, _, err = run_cli([*command, "resume=true"], tmp_path, capsys, monkeypatch)
    assert code == 1 and "3 job(s) of the sweep failed" in err, err
    assert [t.state.name for t in _study(sweep).trials][5:] == ["FAIL"] * 3  # the queued trials ran
    assert sorted(_summaries(sweep)) == folders  # in their own folders: no new one


def test_a_trial_cut_off_continues_in_its_own_folder_and_other_settings_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A real interruption (the second trained trial stopped at the start of its second epoch, after
    its first epoch's checkpoint): the resume continues that trial from its checkpoint in its own folder
    (it was sent to a new folder, found the old one's claim, and failed), and the count is right."""
    sweep = tmp_path / "search"
    command = ["train", "experiment=mp_search", "trainer.num_threads=1", "hydra.sweeper.n_trials=3",
               f"hydra.sweep.dir={sweep}", "trainer.epochs=2"]
    original, starts = Method.on_epoch_start, []

    def stop_second_run(self, model, epoch: int, epochs: int) -> None:
        starts.append(epoch)
        if starts.count(1) == 2:
            raise Interrupted("stopped by SIGINT (test)", signal.SIGINT)
        original(self, model, epoch, epochs)

    with monkeypatch.context() as patch:
        patch.setattr(Method, "on_epoch_start", stop_second_run)
        code, _, err = run_cli(command, tmp_path, capsys, monkeypatch)
    assert code == 128 + signal.SIGINT, err
    [cut] = [p.parent for p in sweep.glob("*/last.ckpt") if not (p.parent / "summary.json").exists()]
    assert load_checkpoint(cut)["epoch"] == 1

    code, _, err = run_cli([*command[:-1], "trainer.epochs=3", "resume=true"], tmp_path, capsys, monkeypatch)
    assert code == 1 and err.strip() == (
        f"qnnrun: error: {sweep} holds a search started with other settings (then: trainer.epochs=2; now: "
        f"trainer.epochs=3): a search continues with the settings it started with; give another hydra.sweep.dir "
        f"for a new search")
    code, _, err = run_cli([*command, "resume=true"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "done" and summary["epochs"] == 2
    assert "resuming" in (cut / "train.log").read_text()
    study = _study(sweep)
    assert [t.state.name for t in study.trials].count("COMPLETE") == 3
    again = [t for t in study.trials if t.state.name == "COMPLETE" and t.params == next(
        t.params for t in study.trials if t.state.name == "FAIL")]
    assert again and again[0].values == [pytest.approx(summary["test_acc"]), pytest.approx(summary["gbops"])]
    assert all(s["status"] in ("done", "duplicate") for s in _summaries(sweep).values())


def test_sweeper_options_the_search_cannot_run_with_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for option, message in [
            ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs=0 is not valid: expected an integer >= 1"),
            ("hydra.sweeper.n_trials=-1", "hydra.sweeper.n_trials=-1 is not valid: expected an integer >= 1"),
            ("hydra.sweeper.direction=[minimize,maximize]", "hydra.sweeper.direction=['minimize', 'maximize'] is "
             "not valid: each trial returns test_acc, gbops, so the search maximizes the first and minimizes the "
             "second; valid is [maximize, minimize]"),
            ("hydra.sweeper.max_failure_rate=2", "hydra.sweeper.max_failure_rate=2.0 is not valid: expected a "
             "number from 0 to 1"),
            # Hydra's several lines before; the sampler is built before any sweeper code runs.
            ("hydra.sweeper.sampler.population_size=1", "hydra.sweeper.sampler is not valid: NSGAIISampler refuses "
             "its options: `population_size` must be greater than or equal to 2."),
            ("hydra.sweeper.sampler._target_=optuna.samplers.Nope", "hydra.sweeper.sampler._target_=optuna.samplers."
             "Nope cannot be loaded: choose a sampler with hydra/sweeper/sampler=, one of cmaes, grid, motpe, nsgaii, "
             "random, tpe"),
            # Hydra's several lines, after an empty study was made: the corrected command asked for resume=true.
            ('hydra.sweeper.params={search.features_1: "interval(1)"}', "the search space cannot be read at "
             "search.features_1=interval(1): TypeError while evaluating 'interval(1)': missing a required argument: "
             "'end' (each dimension is choice(a, b, ...), range(start, stop[, step]), interval(low, high) or "
             "tag(log, interval(low, high)))"),
            ('hydra.sweeper.params={search.features_1: "interval(5, 1)"}', "the search space cannot be read at "
             "search.features_1=interval(5, 1): The `low` value must be smaller than or equal to the `high` value "
             "(low=5.0, high=1.0). (each dimension is")]:
        code, _, err = run_cli([*SEARCH, option, f"hydra.sweep.dir={tmp_path / 'search'}"], tmp_path, capsys,
                               monkeypatch)
        assert code == 1 and err.startswith(f"qnnrun: error: {message}") and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "search").exists()


@pytest.mark.slow
def test_a_config_group_searched_over_as_numbers_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna draws bits=choice(2, 4) as the number 2, which Hydra refused as a config group's option:
    the first job's check and then every trial failed. Quoted, the search runs."""
    sweep = tmp_path / "search"
    code, _, err = run_cli(["train", "-m", "hydra/sweeper=search", "bits=choice(2, 4)", "model.widths=[8]",
                            "hydra.sweeper.n_trials=2", "trainer.epochs=1", "trainer.num_threads=1",
                            f"hydra.sweep.dir={sweep}"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert [t.state.name for t in _study(sweep).trials] == ["COMPLETE"] * 2
    assert {s["bits_w"] for s in _summaries(sweep).values()} <= {2, 4}


def test_numbers_drawn_for_a_config_group_are_quoted_and_hydras_own_optuna_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """What the slow test above runs, cheaply: the command line's choice() quoted, and so are the
    trials' overrides the search launches; Hydra's own optuna sweeper, which quotes nothing, is
    refused in one line for search."""
    from hydra_plugins.qnnrun_search.search_sweeper import _SearchLauncher

    from qnnrun.cli import quote_numeric_groups

    assert quote_numeric_groups(["bits=choice(2, 4)", "optim.lr=choice(1, 2)"]) == [
        "bits=choice('2','4')", "optim.lr=choice(1, 2)"]
    launched = []

    class Launcher:
        def launch(self, job_overrides: list, initial_job_idx: int) -> list:
            launched.extend(job_overrides)
            return []

    _SearchLauncher(Launcher(), 0, "sqlite://", "qnnrun", {}).launch([["bits=2", "seed=1"]], 0)
    assert launched == [["bits='2'", "seed=1"]]
    code, _, err = run_cli(["train", "-m", "hydra/sweeper=optuna", "bits=choice(2, 4)",
                            f"hydra.sweep.dir={tmp_path / 'optuna'}"], tmp_path, capsys, monkeypatch)
    assert code == 1 and err.startswith("qnnrun: error: hydra/sweeper=optuna is Hydra's Optuna sweeper as it comes")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "optuna").exists()


def test_a_value_the_run_needs_is_asked_for_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_cli(["train", "init_from=???"], tmp_path, capsys, monkeypatch)
    assert code == 1 and err.strip() == ("qnnrun: error: init_from has no value and this run needs one: give "
                                         "init_from=VALUE (the checkpoint to start from: a .ckpt file or a run folder)")
    assert not (tmp_path / "outputs").exists()



@pytest.mark.slow
def test_trials_in_parallel_that_draw_the_same_widths_both_get_the_objectives(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """NSGA-II (seed 0) draws the same widths for both trials of the first batch; trained at once, the
    second found the first still training and failed (no objectives): now it gets the first's."""
    sweep = tmp_path / "search"
    code, _, err = run_cli([*SEARCH, "hydra.sweeper.n_trials=2", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
                            "hydra.sweeper.n_jobs=2", f"hydra.sweep.dir={sweep}"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    trials = _study(sweep).trials
    assert trials[0].params == trials[1].params  # the case this test is about
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2 and trials[0].values == trials[1].values
    assert sorted(s["status"] for s in _summaries(sweep).values()) == ["done", "duplicate"]


@pytest.mark.slow
def test_resume_without_a_sweep_folder_finds_the_search(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_cli([*SEARCH, "hydra.sweeper.n_trials=1"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    code, _, err = run_cli([*SEARCH, "hydra.sweeper.n_trials=2", "resume=true"], tmp_path, capsys, monkeypatch)
    assert code == 0 and "continuing the sweep in" in err, err
    [study] = list((tmp_path / "outputs").rglob("optuna.db"))
    assert len(_study(study.parent).trials) == 2


@pytest.mark.slow
def test_another_sampler_runs_from_a_preset_of_ones_own_on_the_searchpath(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped presets set NSGA-II's population_size, which TPE lacks; a copy without it in a
    folder given by hydra.searchpath runs (the command's own check refused presets from there)."""
    preset = (Path(__file__).parents[1] / "qnnrun" / "conf" / "experiment" / "mp_search.yaml").read_text()
    preset = preset.replace("    sampler:\n      population_size: 4   # two NSGA-II generations in 8 trials\n", "")
    assert "population_size" not in preset
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mp_tpe.yaml").write_text(preset)
    sweep = tmp_path / "search"
    code, _, err = run_cli(["train", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=mp_tpe",
                            "hydra/sweeper/sampler=tpe", "hydra.sweeper.n_trials=2", "trainer.epochs=1",
                            "trainer.num_threads=1", f"hydra.sweep.dir={sweep}"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert [t.state.name for t in _study(sweep).trials] == ["COMPLETE"] * 2
