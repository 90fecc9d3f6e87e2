"""``hydra/launcher=local``: hydra-joblib-launcher's launcher (several jobs at once, loky processes),
stopped cleanly by SIGINT/SIGTERM.

Ctrl-C (or a scheduler's SIGTERM) reaches the sweep's process and its workers alike (one process
group). Each job writes its checkpoint, says so in one line and exits ``128 + signum``. The sweep's
own process used to wait in joblib and then print joblib's ``TerminatedWorkerError`` as a traceback
with exit code 1 (Ctrl-C), and joblib, once one worker had gone, could stop the others before they
had written their checkpoints. While its jobs run, this launcher's process instead ends at the first
signal with one line and ``128 + signum``, leaving the workers to finish their own stops. Signalled
alone (``kill PID``, ``timeout``), it exits the same way, and each worker stops at its next step when
it finds its parent gone (:class:`qnnrun.stop.StopRequest`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class LocalLauncher(JoblibLauncher):
    """:class:`JoblibLauncher` whose sweep, stopped by a signal while its jobs run, exits in one line."""

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        previous = {signum: signal.signal(signum, _stop) for signum in STOP_SIGNALS}
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _stop(signum: int, frame: Any) -> None:
    """The sweep's one line for a stop by ``signum``, and exit ``128 + signum`` at once (no cleanup that
    could stop the workers: each finishes its own stop and writes its checkpoint)."""
    print(f"qnnrun: the sweep was stopped by {signal.Signals(signum).name}: its running jobs write their "
          f"checkpoints (their lines follow); continue it with its command plus resume=true", file=sys.stderr,
          flush=True)
    os._exit(128 + signum)
