"""Exceptions that nnpflow raises on purpose.

Every error about user data names where the problem is: the file, the archive
member and the line when there is one, followed by what is wrong.  The policy
``on_error: skip`` catches :class:`InputError` per source and records
``str(error)`` in the rejected list, so that string must stand on its own.
"""

from __future__ import annotations


class NNPFlowError(Exception):
    """Base class of all nnpflow errors."""


class InputError(NNPFlowError, ValueError):
    """Bad input data: a file, archive member or record that cannot be used.

    Parameters
    ----------
    reason:
        What is wrong, e.g. ``"energy line has non-numeric value 'abc'"``.
    source:
        The file (or archive) path, or another label for in-memory records.
    member:
        The archive member name, or ``None``.
    line:
        1-based line number inside the file or member, or ``None``.
    """

    def __init__(self, reason: str, source: str | None = None,
                 member: str | None = None, line: int | None = None):
        self.reason = reason
        self.source = source
        self.member = member
        self.line = line
        super().__init__(str(self))

    @property
    def location(self) -> str:
        """``source[:member][, line N]``; empty when nothing is known."""
        loc = self.source or ""
        if self.member:
            loc = f"{loc}:{self.member}" if loc else self.member
        if self.line is not None:
            loc = f"{loc}, line {self.line}" if loc else f"line {self.line}"
        return loc

    def __str__(self) -> str:
        loc = self.location
        return f"{loc}: {self.reason}" if loc else self.reason

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.reason, self.source, self.member, self.line))

    def located(self, source: str | None = None, member: str | None = None,
                line: int | None = None) -> "InputError":
        """A copy with missing location parts filled in (existing parts win)."""
        return type(self)(self.reason, self.source or source,
                          self.member or member,
                          self.line if self.line is not None else line)


class OutputError(NNPFlowError, OSError):
    """An output file could not be written (disk full, no permission, a missing
    folder): one line naming the target file.  The atomic writers
    (:mod:`nnpflow.safe_write`) raise it after removing their temporary file, so
    nothing partial is left at the target."""

    def __init__(self, target: str, reason: str, errno: int | None = None):
        super().__init__(f"cannot write {target}: {reason}")
        self.errno = errno
        self.filename = target
        self.strerror = reason

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):
        return (type(self), (self.filename, self.strerror, self.errno))


def os_error_text(exc: OSError) -> str:
    """``exc`` as one line: the OS's reason (``No space left on device``) and the
    file when known -- also for h5py's long multi-part messages."""
    import os
    import re

    found = re.search(r"errno = (\d+)", str(exc))  # h5py: "... errno = 28, error message ..."
    if found:
        reason = os.strerror(int(found.group(1)))
    elif exc.strerror:
        reason = exc.strerror
    else:
        reason = os.strerror(exc.errno) if exc.errno else (str(exc).splitlines() or [""])[0]
    name = exc.filename
    return f"{name}: {reason}" if name else reason


class ConfigError(NNPFlowError, ValueError):
    """An invalid configuration value or an unknown configuration key."""


class DescriptorMismatchError(NNPFlowError):
    """Persisted features or a model were made with other descriptor settings."""


class SchemaError(NNPFlowError):
    """A file of an unknown, newer or malformed nnpflow schema."""


class ResumeMismatchError(NNPFlowError):
    """A checkpoint does not belong to the configuration or data it is resumed with."""


class SplitMismatchError(NNPFlowError, ValueError):
    """A split file does not belong to the structures it is used with."""


class NonFiniteError(NNPFlowError, ValueError):
    """Training met a non-finite loss (NaN or ±inf): the message names the epoch and,
    where they can be found, the structures with non-finite inputs."""
