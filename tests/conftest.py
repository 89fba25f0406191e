"""Shared pytest fixtures.

Tests run with one torch thread (the CI machine has 2 cores and tests run beside
each other's subprocesses).  Reference data from ``../shared/data`` is optional:
tests that need it take the ``shared_data`` fixture and are skipped without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$NNPFLOW_SHARED_DATA`` or ``<repo>/../shared/data`` when it exists."""
    env = os.environ.get("NNPFLOW_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder with aenet-reference/ and xsf-TiO2/; skips the test when absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("reference data ../shared/data not available "
                    "(set NNPFLOW_SHARED_DATA to its folder)")
    return path
