"""``hydra/launcher=local``: hydra-joblib-launcher's launcher (several jobs at once, loky processes),
stopped cleanly by SIGINT/SIGTERM.

Ctrl-C (or a scheduler's SIGTERM) reaches the sweep's process and its workers alike. Each job writes
its checkpoint, says so in one line and exits ``128 + signum``; joblib then raised
``TerminatedWorkerError`` in the sweep's process, which Hydra printed as a traceback with exit code 1.
This launcher ends the sweep with one line and ``128 + signum`` instead; a second signal stops it at
once, as a single run's does.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class LocalLauncher(JoblibLauncher):
    """:class:`JoblibLauncher` whose sweep, stopped by a signal while its jobs run, exits in one line."""

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        from joblib.externals.loky.process_executor import TerminatedWorkerError

        received: list[int] = []

        def note(signum: int, frame: Any) -> None:
            if received:  # a second signal: stop now
                signal.signal(signum, previous[signum] or signal.SIG_DFL)
                signal.raise_signal(signum)
            received.append(signum)

        previous = {signum: signal.signal(signum, note) for signum in STOP_SIGNALS}
        try:
            return super().launch(job_overrides, initial_job_idx)
        except TerminatedWorkerError:
            if not received:
                raise
            name = signal.Signals(received[0]).name
            print(f"qnnrun: the sweep was stopped by {name}: its running jobs wrote their checkpoints (their "
                  f"lines above); continue it with its command plus resume=true", file=sys.stderr, flush=True)
            sys.exit(128 + received[0])
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
