"""Stopping a training cleanly: SIGINT/SIGTERM become a request the loop honours after the current step."""

from __future__ import annotations

import logging
import multiprocessing
import os
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

    In a process a qnnrun command started (a ``hydra/launcher=local`` worker, a ``trainer.devices``
    rank), the command's end is a request too, as SIGTERM: signalled alone (``kill PID``, ``timeout``),
    a local sweep's command exits at once, and its workers, which no signal reached, would train on
    orphaned (found 2026-12-07). A plain run outlives its shell, as ``nohup`` wants.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_S = 2.0

    def __init__(self) -> None:
        self._signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}
        self._parent: int | None = None  # the starting command's pid, where this is a process it started

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        if multiprocessing.parent_process() is not None:
            self._parent = os.getppid()
        return self

    @property
    def signum(self) -> int | None:
        """The signal that asked for the stop: SIGINT/SIGTERM received, or SIGTERM once the command that
        started this process has gone (checked at each call: one ``getppid`` system call); None if none."""
        if self._signum is None and self._parent is not None and os.getppid() != self._parent:
            log.warning("the command that started this process (pid %d) has gone: stopping as if by SIGTERM",
                        self._parent)
            self._signum = signal.SIGTERM
        return self._signum

    def _handle(self, signum: int, frame: Any) -> None:
        if self._signum is None:
            self._signum, self._first_at = signum, time.monotonic()
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
