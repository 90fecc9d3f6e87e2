"""Accuracy-vs-BOPs search over bit widths: hydra-optuna-sweeper's sweeper with its study stored in the
sweep folder, so that a search is continued, not started again, with ``resume=true``.

``hydra/sweeper=search`` (qnnrun's ``conf/hydra/sweeper/search.yaml``) selects it. Each trial is one
training job (``qnnrun train``); the job returns :func:`qnnrun.runs.objectives`, which the sweeper tells
the study. The study is Optuna's SQLite storage at ``<sweep dir>/optuna.db``, with the command's run
settings and search space (:data:`COMMAND`). A search run again with ``resume=true`` must have those
(a search of other settings is refused in one line); it counts the trials that ended toward
``n_trials`` (completed, or failed for good: below) and first runs again, with the same parameters and
in their own job folders (where a cut trial continues from its checkpoint), the trials that did not
end: cut off by an interruption (still running in the study) or failed. A failed trial is recorded
(its ``summary.json``, a failed trial in the study) and the search goes on; it is run again once, by
the next resume: failed again, while another trial of the search has completed, it failed for its own
parameters and is not run again (:data:`FAILED_BEFORE`). A search none of whose trials has completed
stops once :data:`FIRST_FAILURES` trials of the command have failed: then something every trial shares
is wrong. A trial whose run another trial of the same batch trains (the same widths drawn twice) gets
that run's objectives once the batch has ended.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("qnnrun")

STUDY_FILE = "optuna.db"


# Study user attributes: the run settings and search space the search was started with (compared on
# resume); the numbers of the trials a resume has run again (not counted as to be run again); the
# numbers of the trials that run again a failed trial (or continue such a trial that was cut off): one
# of these that failed too is failed for good once the search has a completed trial.
COMMAND, RUN_AGAIN, FAILED_BEFORE = "qnnrun_command", "qnnrun_run_again", "qnnrun_failed_before"


class OptunaSearch(OptunaSweeper):
    """:class:`OptunaSweeper` whose study lives in the sweep folder and continues with ``resume=true``."""

    def __init__(self, **options: Any) -> None:
        _check_options(options)  # before the plugin's own asserts, which print a traceback
        super().__init__(**options)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        impl = self.sweeper
        self.config = config
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.resume = config.get("resume") is True
        impl.study_name = impl.study_name or "qnnrun"
        if impl.storage is None:
            impl.storage = f"sqlite:///{(self.sweep_dir / STUDY_FILE).resolve()}"

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from qnnrun.runs import MULTIRUN_CONFIG
        from qnnrun.sweep import run_overrides

        impl = self.sweeper
        _check_search_space(impl, arguments)
        command = sorted(run_overrides(list(arguments)) or [])
        command += sorted(f"hydra.sweeper.params.{key}={value}" for key, value in (impl.params or {}).items())
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sqlite = impl.storage.startswith("sqlite:///")  # asked only once the file is there: asking creates it
        existing = ({s.study_name for s in optuna.get_all_study_summaries(storage=impl.storage)}
                    if not sqlite or Path(impl.storage[len("sqlite:///"):]).is_file() else set())
        waiting = False  # trials queued to run again: by this resume, or by an earlier one cut off before they started
        if impl.study_name in existing:
            if not self.resume:
                _fail(f"{self.sweep_dir} holds the search {impl.study_name!r} already: continue it with "
                      f"resume=true, or give another hydra.sweep.dir")
            study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
            started = study.user_attrs.get(COMMAND)
            if started is not None and started != command:
                then = ", ".join(sorted(set(started) - set(command))) or "nothing more"
                now = ", ".join(sorted(set(command) - set(started))) or "nothing more"
                _fail(f"{self.sweep_dir} holds a search started with other settings (then: {then}; now: {now}): a "
                      f"search continues with the settings it started with; give another hydra.sweep.dir for a new "
                      f"search")
            done = set(study.user_attrs.get(RUN_AGAIN, []))
            failed_before = set(study.user_attrs.get(FAILED_BEFORE, []))
            completed = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
            # Failed for good: failed when run again after a failure, in a search that works (while none
            # of its trials has completed, a fault all trials share may be the cause: it runs again).
            given_up = {t.number for t in study.trials if completed and t.state == optuna.trial.TrialState.FAIL
                        and t.number not in done and t.number in failed_before}
            impl.n_trials = max(0, impl.n_trials - completed - len(given_up))
            again = [t for t in study.trials if t.number not in (done | given_up) and t.state in (
                optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL)][:impl.n_trials]
            for trial in again:
                failed = trial.state == optuna.trial.TrialState.FAIL or trial.number in failed_before
                if trial.state == optuna.trial.TrialState.RUNNING:  # cut off by an interruption
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                with warnings.catch_warnings():  # enqueue_trial is "experimental" in optuna 2.x
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.enqueue_trial(trial.params)
                if failed:
                    failed_before.add(study.get_trials(deepcopy=False)[-1].number)  # the trial just queued
            waiting = any(t.state == optuna.trial.TrialState.WAITING for t in study.trials)
            study.set_user_attr(RUN_AGAIN, sorted(done | {t.number for t in again}))
            study.set_user_attr(FAILED_BEFORE, sorted(failed_before))
            impl.job_idx = _next_job_number(self.sweep_dir)  # new trials' job folders follow the old ones
            log.info("continuing the search in %s: %d trials completed, %d failed again after a failure (not run "
                     "again), %d cut off or failed run again, %d to go", impl.storage, completed, len(given_up),
                     len(again), impl.n_trials)
        else:
            completed = 0
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            study = optuna.create_study(study_name=impl.study_name, storage=impl.storage,
                                        directions=impl._get_directions())
            study.set_user_attr(COMMAND, command)
        # What `qnnrun train ... resume=true` without hydra.sweep.dir looks for (qnnrun.sweep.find_sweep).
        OmegaConf.save(self.config, self.sweep_dir / MULTIRUN_CONFIG)
        impl.launcher = _SearchLauncher(impl.launcher, 0 if completed else FIRST_FAILURES, impl.storage,
                                        impl.study_name,
                                        _unfinished_folders(self.sweep_dir) if waiting else {})
        return impl.sweep(arguments)


def _check_options(sweeper: Any) -> None:
    """One error line for a sweeper option (``hydra.sweeper.*``, a mapping) the search cannot run with,
    before any folder is made."""
    from qnnrun.runs import OBJECTIVES

    for key in ("n_trials", "n_jobs"):
        value = sweeper.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(f"hydra.sweeper.{key}={value!r} is not valid: expected an integer >= 1")
    direction = sweeper.get("direction") or []
    direction = [direction] if isinstance(direction, str) else list(direction)
    if [str(d) for d in direction] != ["maximize", "minimize"]:
        _fail(f"hydra.sweeper.direction={direction} is not valid: each trial returns {', '.join(OBJECTIVES)}, so "
              f"the search maximizes the first and minimizes the second; valid is [maximize, minimize]")
    rate = sweeper.get("max_failure_rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        _fail(f"hydra.sweeper.max_failure_rate={rate!r} is not valid: expected a number from 0 to 1")


def _check_search_space(impl: Any, arguments: list[str]) -> None:
    """One error line for a search space the plugin cannot read (``foo(1)``, ``interval(1)``), read
    as the plugin will read it, before the sweep folder and the study are made (an empty study would
    make the corrected command ask for resume=true)."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    impl._process_searchspace_config()
    for entry in impl._parse_sweeper_params_config() + list(arguments):
        try:
            create_params_from_overrides([entry])
        except Exception as error:
            lines = [line.strip() for line in str(error).splitlines()
                     if line.strip() and not line.startswith(("See http", "Error parsing override"))]
            _fail(f"the search space cannot be read at {entry}: {'; '.join(lines[:2]) or type(error).__name__} (each "
                  f"dimension is choice(a, b, ...), range(start, stop[, step]), interval(low, high) or tag(log, "
                  f"interval(low, high)))")


def _unfinished_folders(sweep_dir: Path) -> dict[Path, tuple[int, list[str]]]:
    """Job folders of ``sweep_dir`` whose run is not done (cut off, failed, a duplicate of such a
    run): folder -> (job number, its run's overrides, :func:`qnnrun.sweep.saved_run_overrides`)."""
    from qnnrun.runs import read_summary
    from qnnrun.sweep import saved_run_overrides

    def done(summary: dict | None) -> bool:
        if summary is not None and summary.get("status") == "duplicate" and summary.get("same_as"):
            summary = read_summary(Path(str(summary["same_as"])))
        return summary is not None and summary.get("status") == "done"

    folders = {}
    for folder, number in _job_folders(sweep_dir):
        saved = saved_run_overrides(folder)
        if saved is not None and not done(read_summary(folder)):
            folders[folder] = (number, saved)
    return folders


def _job_folders(sweep_dir: Path) -> list[tuple[Path, int]]:
    """``(folder, job number)`` of the job folders ``<num>_...`` in ``sweep_dir``."""
    pairs = []
    for folder in sorted(sweep_dir.glob("[0-9]*_*")):
        number = folder.name.split("_", 1)[0]
        if folder.is_dir() and number.isdigit():
            pairs.append((folder, int(number)))
    return pairs


def _next_job_number(sweep_dir: Path) -> int:
    """One more than the largest job number of ``sweep_dir``'s job folders, or 0."""
    return max((number for _, number in _job_folders(sweep_dir)), default=-1) + 1


# A search whose first trials all fail stops (a setting every trial shares is wrong: data, paths, a
# typo'd value) after this many failures in one command, so that a resume after a fix runs as many;
# once a trial of the search has completed, failures (a width that diverges) are recorded and the
# search goes on.
FIRST_FAILURES = 3


class _SearchLauncher:
    """The sweep's launcher, with three duties of the search:

    * a trial run again by a resume goes to its own job folder (the job number of the folder that holds
      its parameters and no finished run), where a cut trial continues from its checkpoint;
    * a trial whose run another trial of its batch trained (a duplicate record) gets that run's
      objectives once the batch has ended, instead of failing;
    * once ``count`` trials of the command have ended and none of them completed (a failed job returns
      no objectives), the search stops with one error; they are marked failed in the study first. The
      search gives ``count`` 0 (no stop) once any of its trials has completed.
    """

    def __init__(self, launcher: Any, count: int, storage: str, study_name: str,
                 unfinished: dict[Path, tuple[int, list[str]]]) -> None:
        self.launcher, self.count, self.results = launcher, count, []
        self.storage, self.study_name, self.unfinished = storage, study_name, unfinished

    def _number(self, overrides: list[str]) -> int | None:
        """The job number of the unfinished folder whose run these job ``overrides`` are (each folder
        taken once), or ``None`` (a new trial's job takes the next number)."""
        from qnnrun.sweep import run_overrides

        wanted = run_overrides(overrides)
        for folder, (number, saved) in sorted(self.unfinished.items(), key=lambda item: item[1][0]):
            if saved == wanted:
                del self.unfinished[folder]
                return number
        return None

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        import optuna
        from qnnrun.cli import quote_numeric_groups
        from qnnrun.runs import objectives, read_summary

        # Optuna draws a config group's option as the number it reads (bits=choice(2, 4) gives bits=2),
        # which Hydra refuses as a group choice: quoted, as the command line's are.
        job_overrides = [quote_numeric_groups(list(overrides)) for overrides in job_overrides]
        numbers, fresh = [], initial_job_idx
        for overrides in job_overrides:
            number = self._number(list(overrides))
            numbers.append(fresh if number is None else number)
            fresh += number is None
        returns = []
        start = 0
        for end in range(1, len(numbers) + 1):  # each run of consecutive numbers in one launch (in parallel)
            if end == len(numbers) or numbers[end] != numbers[end - 1] + 1:
                returns += self.launcher.launch(job_overrides[start:end], initial_job_idx=numbers[start])
                start = end
        for ret in returns:
            if ret.status.name == "COMPLETED" and ret.return_value is None and ret.hydra_cfg is not None:
                record = read_summary(Path(str(ret.hydra_cfg.hydra.runtime.output_dir))) or {}
                first = read_summary(Path(str(record["same_as"]))) if record.get("status") == "duplicate" else None
                if first is not None and first.get("status") == "done":
                    ret.return_value = objectives(first)
        self.results += [ret.status.name == "COMPLETED" and ret.return_value is not None for ret in returns]
        if self.count and len(self.results) >= self.count and not any(self.results):
            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
            for trial in study.trials:  # this batch's: failed, not cut off
                if trial.state == optuna.trial.TrialState.RUNNING:
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            _fail(f"{self.count} trials failed and none of the search has completed (their summary.json and the log "
                  f"say why): fix what they share outside the command (data, files), then continue with resume=true; "
                  f"a changed setting is a new search (another hydra.sweep.dir)")
        return returns


def _fail(message: str) -> None:
    """One error line and exit 1, as qnnrun's callbacks do (raised here, Hydra would print a traceback)."""
    print(f"qnnrun: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)
