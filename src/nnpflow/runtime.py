"""Process-level runtime settings: torch threads and device selection."""

from __future__ import annotations

import os

import torch

from .errors import ConfigError


def configure_threads(n: int | None) -> int:
    """Set torch's intra-op threads to ``n`` (from Snakemake's ``threads:``).

    ``None`` or ``0`` leaves torch's default.  Inter-op threads are set to 1 once,
    which avoids oversubscription when several jobs share a node.  Returns the
    thread count in effect.
    """
    if n:
        n = max(1, int(n))
        torch.set_num_threads(n)
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (it may be set once per process)
            pass
    return torch.get_num_threads()


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without CUDA is an error."""
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
