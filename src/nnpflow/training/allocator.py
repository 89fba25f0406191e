"""CPU allocator tuning for training loops.

A training step with forces allocates and frees many tensors of a few hundred
kB.  glibc serves allocations above its mmap threshold with fresh ``mmap``
pages, whose first touch page-faults on every step; raising the threshold and
the trim threshold keeps freed memory in the heap for reuse, which made a SchNet
step on 9-atom molecules markedly faster in ``benchmarks/train_schnet.py``.
This changes process-wide allocator settings, so only trainers and benchmarks
call it, never library import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_done = False


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap/trim thresholds (Linux only); True when applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    ok = (mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
          and mallopt(_M_TRIM_THRESHOLD, 1024 * 1024 * 1024) == 1
          and mallopt(_M_TOP_PAD, 64 * 1024 * 1024) == 1)
    _done = ok
    return ok
