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
    """``$NNPFLOW_SHARED_DATA``, else ``<repo>/../shared/data``, else, for a clone
    of a checkout on this machine (``git clone /work/main``), ``../shared/data``
    beside the checkout it was cloned from; ``None`` when none exists."""
    env = os.environ.get("NNPFLOW_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    origin = _local_origin()
    if origin is not None:
        candidates.append(origin.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


def _local_origin() -> Path | None:
    """The folder this checkout was cloned from, when its ``origin`` is a local path."""
    import subprocess
    try:
        url = subprocess.run(["git", "-C", str(REPO), "remote", "get-url", "origin"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    url = url.removeprefix("file://")
    if not url or "://" in url or (":" in url and not url.startswith("/")):
        return None  # no origin, or a remote one (https://, ssh, user@host:path)
    path = Path(url)
    path = path if path.is_absolute() else (REPO / path)
    return path.resolve() if path.is_dir() else None


def pytest_report_header(config):
    found = shared_data_dir()
    return (f"nnpflow reference data: {found}" if found is not None else
            "nnpflow reference data: not found (tests that need it are skipped; "
            "set NNPFLOW_SHARED_DATA)")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


#: what a copy of the workflow needs to run in another folder
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "profiles", "envs")


@pytest.fixture(scope="session")
def copy_workflow():
    """``copy_workflow(dest, parts=WORKFLOW_PARTS) -> dict``: copy the workflow's
    files into ``dest`` and return its default configuration (config/config.yaml),
    for the test to change and write back."""
    import shutil

    import yaml

    def copy(dest: Path, parts=WORKFLOW_PARTS) -> dict:
        for part in parts:
            src = REPO / part
            if src.is_dir():
                shutil.copytree(src, dest / part)
            else:
                shutil.copy(src, dest / part)
        return yaml.safe_load((dest / "config" / "config.yaml").read_text())
    return copy


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder with aenet-reference/ and xsf-TiO2/; skips the test when absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("reference data ../shared/data not available "
                    "(set NNPFLOW_SHARED_DATA to its folder)")
    return path
