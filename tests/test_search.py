"""The accuracy-vs-BOPs search (``hydra/sweeper=search``, ``experiment=mp_search``) on digits: trials
train mixed-precision runs, the study lives in the sweep folder and continues with ``resume=true``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra_utils import run_cli

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
        "qnnrun: error: the first 3 trials of the search failed (their summary.json and the log say why): fix what "
        "they share, then continue with resume=true")
    assert [t.state.name for t in _study(sweep).trials] == ["FAIL"] * 3
    statuses = [s["status"] for s in _summaries(sweep).values()]
    assert "failed" in statuses and set(statuses) <= {"failed", "duplicate"}  # a trial may redraw a failed one


def test_a_value_the_run_needs_is_asked_for_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_cli(["train", "init_from=???"], tmp_path, capsys, monkeypatch)
    assert code == 1 and err.strip() == ("qnnrun: error: init_from has no value and this run needs one: give "
                                         "init_from=VALUE (the checkpoint to start from: a .ckpt file or a run folder)")
    assert not (tmp_path / "outputs").exists()

