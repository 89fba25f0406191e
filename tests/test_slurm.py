"""The example workflow through a real SLURM: ``--workflow-profile profiles/slurm``.

A session fixture starts a one-node SLURM cluster on this machine with
``tests/slurm/local-slurm.sh`` (Debian's slurm-wlm with slurmdbd, installed with
apt-get when missing; about 30 s the first time) and stops it afterwards, unless it
was already running.  The test runs the whole example workflow (small example, two
shards, a tiny model trained for two epochs: ten SLURM jobs -- example, 2 ingest,
manifest, 2 build, merge, split, train, evaluate) with the repository's SLURM profile,
checks the evaluation's outputs, and checks in SLURM's accounting that every job went
through sbatch, under its rule's name, and finished.

Needs root and apt-get (CI has both); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "tests" / "slurm" / "local-slurm.sh"

# installing and starting SLURM, then the whole example workflow, may pass the default 600 s
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1800)]


def _script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LOCAL_SLURM), *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def local_slurm():
    """A running local SLURM cluster (partition ``debug``)."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (slurmd, munged)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no apt-get to install slurm-wlm (Debian/Ubuntu only)")
    if importlib_missing("snakemake_executor_plugin_slurm"):
        pytest.skip("snakemake-executor-plugin-slurm is not installed "
                    "(pip install -e '.[slurm]')")
    before = _script("status", timeout=60).stdout
    was_running = "slurmctld: running" in before and "slurmd: running" in before
    started = _script("start")
    if started.returncode != 0:
        pytest.fail(f"local-slurm.sh start failed (rc {started.returncode}):\n"
                    f"{started.stderr[-3000:]}")
    yield
    if not was_running:
        _script("stop", timeout=120)


def importlib_missing(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is None


def _sacct(workdir: Path, since: str) -> list[dict]:
    """SLURM's accounting records of the batch jobs that ran in ``workdir``."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-S", since, "-o", "JobID,Comment,State,WorkDir"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    rows = []
    for line in out.splitlines():
        job_id, comment, state, wd = line.split("|", 3)
        if Path(wd) == workdir:
            rows.append({"id": job_id, "comment": comment, "state": state})
    return rows


def test_example_workflow_runs_through_sbatch(local_slurm, tmp_path, copy_workflow):
    cfg = copy_workflow(tmp_path)
    cfg["example"].update(n_structures=6, archive_fraction=0.5)
    cfg["database"]["shards"] = 2
    cfg["models"] = {"tiny": {"architecture": "ann", "hidden": [[4, "tanh"]],
                              "active": True, "committee": 1}}
    cfg["training"].update(epochs=2, batch_size=2, patience=0, device="cpu")
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))

    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    start = time.perf_counter()
    proc = subprocess.run(
        ["timeout", "-k", "10", "600", sys.executable, "-m", "snakemake",
         "--workflow-profile", "profiles/slurm",
         # the local cluster's node has 2 CPUs.  A job here takes 10-15 s (mostly
         # Snakemake starting inside it); the plugin polls sacct after this many seconds
         # and then 10 s later each time, so 15 s finds most jobs finished at the first poll
         "--max-threads", "2", "--slurm-init-seconds-before-status-checks", "15"],
        cwd=tmp_path, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake failed after {elapsed:.0f} s:\n{out[-6000:]}"
    print(f"example workflow through SLURM: {elapsed:.1f} s")

    # the workflow finished: one manifest row per example structure, the database holds
    # them in the manifest's order, and the split belongs to them
    from nnpflow.database import DatabaseReader
    from nnpflow.splitting import load_split
    results = tmp_path / "results"
    rows = (results / "manifest" / "manifest.tsv").read_text().splitlines()
    assert len(rows) == 1 + 6
    with DatabaseReader(results / "database" / "database.h5") as db:
        assert db.names() == [row.split("\t")[0] for row in rows[1:]] and db.has_features
        split = load_split(results / "split" / "split.json", db, n_structures=6)
    # the model was trained on a node and evaluated on every part of the split
    metrics = json.loads((results / "evaluation" / "tiny" / "metrics.json").read_text())
    assert metrics["model"]["files"] == ["results/models/tiny/member_0/model.pt"]
    for part in ("train", "validation", "test"):
        assert metrics[part]["n_structures"] == len(split.indices[part])
    for name in ("parity_energy", "parity_forces", "learning_curve"):
        assert (results / "evaluation" / "tiny" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"

    # every non-local job was an sbatch job, visible in SLURM's accounting under its
    # rule's name (the plugin puts "rule_<name>..." into the job comment)
    time.sleep(1)
    jobs = _sacct(tmp_path, since)
    assert jobs, f"sacct lists no job that ran in {tmp_path}"
    rules = Counter(job["comment"].split("_wildcards")[0].removeprefix("rule_")
                    for job in jobs)
    assert rules == Counter({"example": 1, "ingest": 2, "manifest": 1, "species": 1,
                             "build": 2, "merge": 1, "split": 1, "train": 1, "evaluate": 1,
                             "summary": 1}), jobs
    assert {job["state"] for job in jobs} == {"COMPLETED"}, jobs
    # and Snakemake reported the SLURM job ids it submitted
    for job in jobs:
        assert job["id"] in out
