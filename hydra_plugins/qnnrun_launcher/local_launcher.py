"""``hydra/launcher=local``: hydra-joblib-launcher's launcher (several jobs at once, loky processes),
stopped cleanly by SIGINT/SIGTERM.

Ctrl-C reaches the sweep's process and its workers alike (one process group); a scheduler's SIGTERM,
``kill`` or ``timeout`` may reach the sweep's process only. Either way, while its jobs run, the sweep's
process says so in one line, forwards the signal to its workers, waits until they have exited and
exits ``128 + signum``; each running job writes its checkpoint, says so in one line and exits
``128 + signum``, an idle worker exits. A repeat of the signal is forwarded too: a job takes the
signal twice within :attr:`qnnrun.stop.StopRequest.REPEAT_S` seconds (to the process group, then
forwarded) as one stop, and a repeat after that as a stop at once. Joblib is kept out of the stop:
waiting in joblib, the sweep's process printed its ``TerminatedWorkerError`` as a traceback with exit
code 1, and loky, once one worker had gone, killed the others (SIGKILL), perhaps before they had
written their checkpoints. (Before 2026-12-07 the sweep's process exited at once without signalling
the workers: signalled alone, it left them training on as orphans, and a resume found their runs
still claimed.)
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class LocalLauncher(JoblibLauncher):
    """:class:`JoblibLauncher` whose sweep, stopped by a signal while its jobs run, stops its jobs,
    waits for them and exits in one line."""

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        workers: list[Any] | None = None  # taken from loky at the first signal

        def stop(signum: int, frame: Any) -> None:
            """The sweep's one line for a stop by ``signum``, the signal forwarded to the workers, and
            exit ``128 + signum`` once they have gone (no cleanup that could stop them before)."""
            nonlocal workers
            if workers is None:
                print(f"qnnrun: the sweep was stopped by {signal.Signals(signum).name}: its running jobs write "
                      f"their checkpoints (their lines follow); continue it with its command plus resume=true",
                      file=sys.stderr, flush=True)
                workers = _take_workers()
            for worker in workers:
                if worker.is_alive():
                    os.kill(worker.pid, signum)
            for worker in workers:
                worker.join()
            os._exit(128 + signum)

        previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _take_workers() -> list[Any]:
    """The sweep's loky worker processes, taken out of loky's executor, which is marked shut down: a
    worker that exits breaks the executor, whose manager thread then kills the workers it still holds
    (SIGKILL), perhaps while they write their checkpoints; and joblib, when a job ends, submits the next
    queued one, which a shut-down executor refuses (this one, holding no worker, would start new ones)."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    if executor is None:
        return []
    workers = list(executor._processes.values())
    executor._processes.clear()
    executor._flags.shutdown = True
    return workers
