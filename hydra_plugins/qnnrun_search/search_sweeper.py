"""Accuracy-vs-BOPs search over bit widths: hydra-optuna-sweeper's sweeper with its study stored in the
sweep folder, so that a search is continued, not started again, with ``resume=true``.

``hydra/sweeper=search`` (qnnrun's ``conf/hydra/sweeper/search.yaml``) selects it. Each trial is one
training job (``qnnrun train``); the job returns :func:`qnnrun.runs.objectives`, which the sweeper tells
the study. The study is Optuna's SQLite storage at ``<sweep dir>/optuna.db``: a search run again with ``resume=true``
counts the trials that ended (finished or failed) toward ``n_trials`` and runs again, with the same
parameters, the trials it finds still running (the ones an interruption cut off). A failed trial is
recorded (its ``summary.json``, a failed trial in the study) and the search goes on, unless its first
:data:`FIRST_FAILURES` trials all fail: then something every trial shares is wrong and it stops.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig

log = logging.getLogger("qnnrun")

STUDY_FILE = "optuna.db"


class OptunaSearch(OptunaSweeper):
    """:class:`OptunaSweeper` whose study lives in the sweep folder and continues with ``resume=true``."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        impl = self.sweeper
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.resume = config.get("resume") is True
        impl.study_name = impl.study_name or "qnnrun"
        if impl.storage is None:
            impl.storage = f"sqlite:///{(self.sweep_dir / STUDY_FILE).resolve()}"

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        impl = self.sweeper
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        existing = {s.study_name for s in optuna.get_all_study_summaries(storage=impl.storage)}
        if impl.study_name in existing:
            if not self.resume:
                _fail(f"{self.sweep_dir} holds the search {impl.study_name!r} already: continue it with "
                      f"resume=true, or give another hydra.sweep.dir")
            study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
            cut = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
            for trial in cut:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                with warnings.catch_warnings():  # enqueue_trial is "experimental" in optuna 2.x
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.enqueue_trial(trial.params)
            ended = sum(t.state.is_finished() for t in study.trials) - len(cut)
            impl.n_trials = max(0, impl.n_trials - ended)
            impl.job_idx = len(study.trials)  # new trials' job folders follow the old ones
            log.info("continuing the search in %s: %d trials ended, %d cut off run again, %d to go", impl.storage,
                     ended, len(cut), impl.n_trials)
        impl.launcher = _StopWhenAllFail(impl.launcher, FIRST_FAILURES, impl.storage, impl.study_name)
        return impl.sweep(arguments)


# A search whose first trials all fail stops (a setting every trial shares is wrong: data, paths, a
# typo'd value); later failures (a width that diverges) are recorded and the search goes on.
FIRST_FAILURES = 3


class _StopWhenAllFail:
    """The sweep's launcher, stopping the search with one error once its first ``count`` trials have all
    failed (a failed job returns no objectives); they are marked failed in the study first."""

    def __init__(self, launcher: Any, count: int, storage: str, study_name: str) -> None:
        self.launcher, self.count, self.results = launcher, count, []
        self.storage, self.study_name = storage, study_name

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        import optuna

        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        self.results += [ret.status.name == "COMPLETED" and ret.return_value is not None for ret in returns]
        if len(self.results) >= self.count and not any(self.results[:self.count]):
            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
            for trial in study.trials:  # this batch's: failed, not cut off
                if trial.state == optuna.trial.TrialState.RUNNING:
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            _fail(f"the first {self.count} trials of the search failed (their summary.json and the log say why): "
                  f"fix what they share, then continue with resume=true")
        return returns


def _fail(message: str) -> None:
    """One error line and exit 1, as qnnrun's callbacks do (raised here, Hydra would print a traceback)."""
    print(f"qnnrun: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)
