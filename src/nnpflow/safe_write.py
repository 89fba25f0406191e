"""Atomic file output: write to a temporary path next to the target, then rename.

An interrupted writer (exception, SIGTERM, SIGKILL) never leaves a file at the
final path that looks complete; it leaves at most a ``.<name>.tmp-*`` file,
which the next run overwrites or ignores.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it on success.

    The temporary file is removed if the block raises.  The parent directory is
    created when missing.  ``suffix`` is appended to the temporary name (some
    writers, e.g. matplotlib, infer the format from it).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=suffix,
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp creates 0600; give the file the usual umask mode
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (keys sorted, trailing newline)."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def canonical_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) used for hashing settings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
