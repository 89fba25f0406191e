"""Process-level runtime settings: torch threads and device selection."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: environment variables the OpenMP/BLAS runtimes read when torch is first imported
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def configure_threads(n: int | None) -> int | None:
    """Limit torch (and BLAS) to ``n`` intra-op threads (from Snakemake's ``threads:``).

    ``None`` or ``0`` leaves the defaults.  Stages that never use torch should not
    pay for importing it (about 2 s per job), so when torch is not imported yet only
    the environment variables it reads at import time are set; otherwise the
    running torch is configured too (inter-op threads 1, which avoids
    oversubscription when several jobs share a node).  Returns the thread count in
    effect when torch is loaded, else ``n``.
    """
    if n:
        n = max(1, int(n))
        for name in _THREAD_VARIABLES:
            os.environ[name] = str(n)
    torch = sys.modules.get("torch")
    if torch is None:
        return n or None
    if n:
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (it may be set once per process)
            pass
    return torch.get_num_threads()


def resolve_device(spec: "str | torch.device | None" = "auto") -> "torch.device":
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without CUDA is an error."""
    import torch

    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but torch reports no CUDA device "
                          f"(torch {torch.__version__}); use device: cpu or install a CUDA build")
    try:
        return torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {spec!r}: {exc}") from None


# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_kept: tuple[int, int, int] | None = None


def keep_freed_memory(trim_threshold_mb: int = 1024, mmap_threshold_mb: int = 256,
                      top_pad_mb: int = 64) -> bool:
    """Keep freed heap memory in the process for reuse (glibc ``mallopt``).

    Featurisation and training allocate and free tensors of a few hundred kB to
    tens of MB every batch.  By default glibc maps such blocks freshly and gives
    them back on free, so every batch page-faults on new memory; on virtual
    machines that cost 25-35 % of a descriptor batch and a large share of a small
    training step.  Raising ``M_MMAP_THRESHOLD``/``M_TRIM_THRESHOLD`` (the knobs
    behind ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``) and
    ``M_TOP_PAD`` keeps freed blocks for reuse; the process then keeps its peak
    heap (up to ``trim_threshold_mb`` of it idle) instead of returning it.

    It changes process-wide allocator behaviour, so library code never calls it
    on import; compute processes do (the Snakemake stage adapter, database build
    workers, trainers, benchmarks).  Returns ``True`` when applied (Linux with
    glibc), ``False`` elsewhere; repeated calls with the same values do nothing.
    """
    global _kept
    key = (int(trim_threshold_mb), int(mmap_threshold_mb), int(top_pad_mb))
    if _kept == key:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mb = 2 ** 20
    ok = mallopt(_M_MMAP_THRESHOLD, key[1] * mb) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, key[0] * mb) == 1 and ok
    ok = mallopt(_M_TOP_PAD, key[2] * mb) == 1 and ok
    if ok:
        _kept = key
    return ok
