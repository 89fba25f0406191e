"""Atomic file output: write to a temporary path next to the target, then rename.

An interrupted writer (exception, SIGTERM, SIGKILL) never leaves a file at the
final path that looks complete.  A writer killed outright (SIGKILL, out of memory)
leaves its ``.<name>.tmp-<host>-<pid>-*`` file behind; the next writer of the same
target on the same host removes such leftovers of processes that no longer run, so
large partial databases do not pile up.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it on success.

    The temporary file is removed if the block raises.  The parent directory is
    created when missing.  ``suffix`` is appended to the temporary name (some
    writers, e.g. matplotlib, infer the format from it).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(target)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{_temp_prefix(target)}{os.getpid()}-",
                                        suffix=suffix, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise _output_error(target, exc) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp creates 0600; give the file the usual umask mode
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if _write_failure(exc, tmp, target):
            # writing failed (disk full, quota, ...): one line naming the target
            raise _output_error(target, exc) from None
        raise


def _write_failure(exc: BaseException, tmp: Path, target: Path) -> bool:
    """Whether ``exc`` is the operating system refusing to write ``tmp`` (not an
    error of the data or of reading another file).  HDF5 reports some failed
    writes as ``RuntimeError`` ("Object copy failed (file write failed: ...,
    filename = '<tmp>', ..., errno = 28, ...)")."""
    if isinstance(exc, OutputError):
        return False
    if isinstance(exc, OSError):
        return getattr(exc, "filename", None) in (None, str(tmp), str(target))
    text = str(exc)
    return isinstance(exc, RuntimeError) and "errno = " in text and str(tmp) in text


def _output_error(target: Path, exc: BaseException) -> OutputError:
    found = re.search(r"errno = (\d+)", str(exc))  # h5py's messages carry the OS errno
    code = int(found.group(1)) if found else getattr(exc, "errno", None)
    if found:
        reason = os.strerror(code)
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = os.strerror(code) if code else (str(exc).splitlines() or ["write failed"])[0]
    return OutputError(str(target), f"{reason} (nothing was written there)", code)


def _temp_prefix(target: Path) -> str:
    host = socket.gethostname().replace("-", "_") or "host"
    return f".{target.name}.tmp-{host}-"


def _remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries of ``target`` left by dead processes of this host.

    Temporaries of other hosts (a shared file system on a cluster) are left alone:
    their writers may still run.
    """
    prefix = _temp_prefix(target)
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for tmp in candidates:
        pid = tmp.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        except PermissionError:  # alive, another user's
            continue


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite number (NaN, ±inf) replaced by ``None`` and numpy
    scalars and arrays as Python numbers and lists: what strict JSON can hold."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if type(obj).__module__ == "numpy":  # numpy scalar or array, without importing numpy
        return json_safe(obj.tolist())
    return obj


def strict_json(obj: Any, indent: int | None = 2, sort_keys: bool = True) -> str:
    """The one JSON writer of nnpflow's outputs: strict JSON (RFC 8259), where a
    non-finite number is written as ``null``, never as the ``NaN``/``Infinity``
    tokens Python's ``json`` writes by default (other JSON readers reject them)."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as strict JSON (:func:`strict_json`: keys sorted, non-finite
    numbers as ``null``) to ``path`` atomically, with a trailing newline."""
    write_text(path, strict_json(obj, indent=indent) + "\n")


def canonical_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) used for hashing settings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
