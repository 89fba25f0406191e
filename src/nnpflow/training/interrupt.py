"""Graceful stop on SIGTERM: finish the step, write a final checkpoint, exit.

Batch schedulers (SLURM) send SIGTERM some time before killing a job.  Inside
``with GracefulInterrupt() as stop:`` the signal only sets ``stop.requested``;
the training loop checks it after every optimiser step, writes its checkpoint
and raises :class:`TrainingInterrupted`, which the command line turns into exit
status 143 (128 + SIGTERM) after a message saying how to resume.  Outside the
main thread signal handlers cannot be installed and the context does nothing.
"""

from __future__ import annotations

import signal
import threading
from typing import Iterable

from ..errors import NNPFlowError


class TrainingInterrupted(NNPFlowError):
    """Training stopped on a signal after writing its checkpoint."""

    def __init__(self, message: str, signal_name: str = "SIGTERM", checkpoints=()):
        super().__init__(message)
        self.signal_name = signal_name
        self.checkpoints = list(checkpoints)

    @property
    def exit_status(self) -> int:
        return 128 + int(getattr(signal, self.signal_name, signal.SIGTERM))


class GracefulInterrupt:
    """Context manager that turns ``signals`` into a flag (``requested``)."""

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,)):
        self.signals = tuple(signals)
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
