"""Graceful stop on SIGTERM: finish the step, write a final checkpoint, exit.

Batch schedulers (SLURM) send SIGTERM some time before killing a job.  Inside
``with GracefulInterrupt() as stop:`` the signal only sets ``stop.requested``;
the training loop checks it after every optimiser step, writes its checkpoint
and raises :class:`TrainingInterrupted`, which the command line turns into exit
status 143 (128 + SIGTERM) after a message saying how to resume.  Outside the
main thread signal handlers cannot be installed and the context does nothing.

Before training has state worth saving (reading and processing the data set,
making pair lists), ``with stop.immediate("processing the data set"):`` makes a
signal stop the work at once: :class:`TrainingInterrupted` is raised within
moments of the signal instead of after the first optimiser step, which may be
minutes later (a scheduler's grace period is often 30-60 s).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterable, Iterator

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


class _StopNow(BaseException):
    """Raised by the signal handler inside :meth:`GracefulInterrupt.immediate` (a
    BaseException, so that no ``except Exception`` of a reader on the way swallows it)."""


class GracefulInterrupt:
    """Context manager that turns ``signals`` into a flag (``requested``)."""

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,)):
        self.signals = tuple(signals)
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._immediate = False

    def _handler(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if self._immediate:
            self._immediate = False
            raise _StopNow()

    @contextlib.contextmanager
    def immediate(self, what: str) -> Iterator[None]:
        """Within this block a signal raises :class:`TrainingInterrupted` at once
        (``what`` says what was stopped, e.g. "processing the data set"); so does
        entering it after a signal arrived.  For work with nothing to save."""
        def stopped() -> TrainingInterrupted:
            name = self.signal_name or "SIGTERM"
            return TrainingInterrupted(f"stopped by {name} while {what}, before any training; "
                                       "nothing to resume: run the same command again", name)
        if self.requested:
            raise stopped()
        self._immediate = bool(self._previous)  # only where the handler is installed
        try:
            yield
        except _StopNow:
            raise stopped() from None
        finally:
            self._immediate = False

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
