"""Process-level runtime settings: torch threads and device selection."""

from __future__ import annotations

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
