"""Stopping a training cleanly: SIGINT/SIGTERM become a request the loop honours after the current step."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from qnnrun.errors import Interrupted
from qnnrun.runs import LAST_CKPT, continue_command

log = logging.getLogger("qnnrun")


class StopRequest:
    """Turns SIGINT/SIGTERM (what a cluster scheduler sends before pre-emption) into a request that
    the training loop honours after the current step: it writes ``last.ckpt`` and stops.

    Installed only in the main thread, where Python delivers signals. A second signal more than
    ``REPEAT_S`` seconds after the first restores the previous handler and re-delivers itself, so
    the process stops at once (checkpoint writes are atomic: ``last.ckpt`` stays whole); a repeat
    within that time is the same request arriving twice (to the process group and forwarded by a
    ``trainer.devices`` parent) and is ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_S = 2.0

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
        elif time.monotonic() - self._first_at > self.REPEAT_S:
            signal.signal(signum, self._previous[signum] or signal.SIG_DFL)
            signal.raise_signal(signum)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler or signal.SIG_DFL)
        self._previous.clear()


def interrupted(signum: int, run_dir: Path, where: str) -> Interrupted:
    """The :class:`Interrupted` error of a run stopped by ``signum`` at ``where`` (its checkpoint
    written); the stop is also logged, so the run's ``train.log`` says how it ended, not only stderr."""
    name = signal.Signals(signum).name
    log.warning("stopped by %s at %s: checkpoint written to %s", name, where, run_dir / LAST_CKPT)
    return Interrupted(f"stopped by {name} at {where}: checkpoint written to {run_dir / LAST_CKPT}; continue "
                       f"this run with {continue_command(run_dir)} (a sweep: its command plus resume=true)", signum)
