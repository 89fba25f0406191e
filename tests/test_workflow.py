"""The Snakemake workflow: the stage adapter, planning, an end-to-end run, reruns.

The adapter tests call ``nnpflow.stages.run_from_snakemake`` in-process with a
stand-in for Snakemake's ``snakemake`` object.  The workflow tests (marker
``workflow``) run the real ``snakemake`` on a copy of the workflow in a temporary
folder with a tiny configuration and read what ``snakemake --dry-run`` plans.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import types
import warnings
from collections import Counter
from pathlib import Path

import pytest
import yaml

from nnpflow.sharding import shard_of
from nnpflow.stages import run_from_snakemake, stage_kwargs

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- the adapter


class _Named(list):
    """A minimal stand-in for Snakemake's Namedlist: a list whose items have names."""

    def __init__(self, **named):
        super().__init__()
        self._names = {}
        for name, value in named.items():
            start = len(self)
            if isinstance(value, list):
                self.extend(value)
                self._names[name] = (start, len(self))
            else:
                self.append(value)
                self._names[name] = (start, None)

    def items(self):
        for name, (start, end) in self._names.items():
            yield name, (self[start] if end is None else list(self[start:end]))


def _job(rule, input=None, output=None, params=None, threads=1, log=()):
    return types.SimpleNamespace(rule=rule, input=input or {}, output=output or {},
                                 params=params or {}, threads=threads, log=list(log))


@pytest.fixture
def probe_stage(monkeypatch):
    """A stage module ``nnpflow.stages.probe`` that records how it was called."""
    module = types.ModuleType("nnpflow.stages.probe")
    calls = []

    def run(shard_manifests, manifest, n_shards, threads, mode="ok"):
        calls.append(dict(shard_manifests=shard_manifests, manifest=manifest,
                          n_shards=n_shards, threads=threads))
        logging.getLogger("nnpflow.stages.probe").info("probe ran on %d files",
                                                       len(shard_manifests))
        warnings.warn("probe warning", UserWarning)
        if mode == "fail":
            from nnpflow.errors import InputError
            raise InputError("energy is not a number", source="a.xsf", line=3)
        Path(manifest).write_text("ok\n")

    module.run = run
    monkeypatch.setitem(sys.modules, "nnpflow.stages.probe", module)
    return calls


def test_adapter_passes_named_entries_params_and_threads(tmp_path, probe_stage):
    out = tmp_path / "manifest.tsv"
    log = tmp_path / "job.log"
    job = _job("merge",
               input=_Named(shard_manifests=["s0.tsv"], extra="unused-unnamed.txt"),
               output=_Named(manifest=str(out)),
               params=dict(stage="probe", code="0123abcd", n_shards=1),
               threads=1, log=[str(log)])
    # "extra" is a named input the stage does not take: a clear error, not a silent drop
    with pytest.raises(TypeError, match=r"run\(\) takes no argument\(s\) \['extra'\]"):
        run_from_snakemake(job)
    assert "rule merge failed" in log.read_text()

    job.input = _Named(shard_manifests=["s0.tsv"])  # a one-element list stays a list
    run_from_snakemake(job)
    assert probe_stage == [dict(shard_manifests=["s0.tsv"], manifest=str(out),
                                n_shards=1, threads=1)]
    assert out.read_text() == "ok\n"
    text = log.read_text()
    assert "probe ran on 1 files" in text           # the stage's logging
    assert "UserWarning: probe warning" in text     # warnings are captured
    assert "stage" not in probe_stage[0] and "code" not in probe_stage[0]


def test_adapter_logs_and_reraises_stage_errors(tmp_path, probe_stage):
    from nnpflow.errors import InputError
    log = tmp_path / "job.log"
    job = _job("probe", input=_Named(shard_manifests=["a", "b"]),
               output=_Named(manifest=str(tmp_path / "m.tsv")),
               params=dict(n_shards=2, mode="fail"), log=[str(log)])
    with pytest.raises(InputError, match="a.xsf, line 3: energy is not a number"):
        run_from_snakemake(job)       # no params.stage: the rule name picks the module
    assert "rule probe failed: a.xsf, line 3: energy is not a number" in log.read_text()
    assert not (tmp_path / "m.tsv").exists()


def test_stage_kwargs_rejects_missing_and_clashing_names():
    def run(manifest, specs, threads=1):
        return None

    assert stage_kwargs(run, {"manifest": "m"}, {}, {"specs": [], "code": "x"},
                        threads=4) == {"manifest": "m", "specs": [], "threads": 4}
    with pytest.raises(TypeError, match=r"no value for run\(\) argument\(s\) \['specs'\]"):
        stage_kwargs(run, {"manifest": "m"}, {}, {})
    with pytest.raises(TypeError, match="output.manifest clashes"):
        stage_kwargs(run, {"manifest": "m"}, {"manifest": "n"}, {"specs": []})


def test_unknown_stage_is_a_clear_error(tmp_path):
    job = _job("nonexistent_stage_xyz", log=[str(tmp_path / "x.log")])
    with pytest.raises(ModuleNotFoundError, match="nnpflow.stages.nonexistent_stage_xyz"):
        run_from_snakemake(job)
    job = _job("x", params={"stage": "../evil"})
    with pytest.raises(ValueError, match="invalid stage name"):
        run_from_snakemake(job)


# ---------------------------------------------------------------- the workflow

WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "profiles", "envs")

XSF = """# total energy = {energy} eV

CRYSTAL
PRIMVEC
  3.60 0.00 0.00
  0.00 3.60 0.00
  0.00 0.00 3.60
PRIMCOORD
  2 1
Cu  0.00 0.00 0.00   0.01 0.00 0.00
Au  1.80 1.80 {z:.2f}   -0.01 0.00 0.00
"""


def write_xsf(path: Path, energy: float, z: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(XSF.format(energy=energy, z=z))


@pytest.fixture
def workdir(tmp_path):
    """A copy of the workflow with a tiny config: 6 example structures, 3 shards,
    and a source folder ``extra/`` with 3 hand-written XSF files."""
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, tmp_path / part)
        else:
            shutil.copy(src, tmp_path / part)
    cfg = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    cfg["example"].update(n_structures=6, archive_fraction=0.5, seed=3)
    cfg["database"]["shards"] = 3
    cfg["sources"] = [{"path": "extra"}]
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for i in range(3):
        write_xsf(tmp_path / "extra" / f"cell-{i}.xsf", energy=-7.0 - 0.1 * i, z=0.1 * i)
    return tmp_path


def snakemake(workdir: Path, *args: str, timeout: int = 300) -> str:
    """Run snakemake in ``workdir``; returns stdout + stderr, fails the test on error."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{out[-5000:]}"
    return out


_JOB_HEAD = re.compile(r"^(?:local)?rule (\w+):$")


def planned_jobs(workdir: Path, *args: str) -> list[dict]:
    """The jobs ``snakemake --dry-run`` plans: [{rule, shard, input}], in printed order."""
    out = snakemake(workdir, "--dry-run", "--cores", "1", *args)
    if "Nothing to be done" in out:
        return []
    jobs: list[dict] = []
    for line in out.splitlines():
        head = _JOB_HEAD.match(line.strip())
        if head:
            jobs.append({"rule": head.group(1), "shard": None, "input": []})
        elif jobs and line.strip().startswith("wildcards:"):
            found = re.search(r"\bshard=(\d+)", line)
            jobs[-1]["shard"] = int(found.group(1)) if found else None
        elif jobs and line.strip().startswith("reason:"):
            jobs[-1]["reason"] = line.split(":", 1)[1].strip()
        elif jobs and line.strip().startswith("input:"):
            jobs[-1]["input"] = [p.strip() for p in line.split(":", 1)[1].split(",")]
    assert jobs, f"could not read the planned jobs from:\n{out[-3000:]}"
    return jobs


class JobSet(Counter):
    """(rule, shard) counts of planned jobs; its repr also shows why each job runs."""

    def __init__(self, jobs: list[dict]):
        super().__init__((job["rule"], job["shard"]) for job in jobs)
        self.reasons = [(job["rule"], job["shard"], job.get("reason")) for job in jobs]

    def __repr__(self) -> str:
        return f"{dict(self)} planned because {self.reasons}"


def job_set(jobs: list[dict]) -> JobSet:
    return JobSet(jobs)


@pytest.mark.workflow
def test_dry_run_plans_every_stage_and_assigns_files_to_shards(workdir):
    jobs = planned_jobs(workdir)
    assert job_set(jobs) == Counter({("example", None): 1, ("ingest", 0): 1,
                                     ("ingest", 1): 1, ("ingest", 2): 1,
                                     ("manifest", None): 1, ("all", None): 1})
    plain = [f"extra/cell-{i}.xsf" for i in range(3)] + \
        [f"results/example/xsf/example-{i:04d}.xsf" for i in range(3)]
    archive = "results/example/archive.tar.bz2"
    for job in jobs:
        if job["rule"] != "ingest":
            continue
        k = job["shard"]
        # a plain file is read by exactly the shard its path hashes to; an archive by all
        assert sorted(job["input"]) == sorted(
            [p for p in plain if shard_of(p, 3) == k] + [archive]), job


@pytest.mark.workflow
@pytest.mark.slow
def test_end_to_end_run_and_what_reruns(workdir):
    out = snakemake(workdir, "--cores", "2")
    results = workdir / "results"
    rows = (results / "manifest" / "manifest.tsv").read_text().splitlines()
    labels = {row.split("\t")[0] for row in rows[1:]}
    assert len(rows) == 1 + 6 + 3
    assert {f"extra/cell-{i}.xsf" for i in range(3)} <= labels
    summary = json.loads((results / "manifest" / "manifest.json").read_text())
    assert summary["n_structures"] == 9
    # one log and one benchmark per job
    for name in ("example", "manifest", "ingest/shard_0", "ingest/shard_1", "ingest/shard_2"):
        assert (results / "logs" / f"{name}.log").stat().st_size > 0, name
        assert (results / "benchmarks" / f"{name}.tsv").exists(), name
    assert "nnpflow.stages.ingest.run(" in (results / "logs" / "ingest" / "shard_0.log").read_text()

    # nothing changed -> nothing to do
    assert planned_jobs(workdir) == []

    # the same settings written in another key order -> still nothing to do
    cfg_file = workdir / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    reordered = {key: cfg[key] for key in reversed(list(cfg))}
    reordered["descriptor"] = dict(reversed(list(cfg["descriptor"].items())))
    cfg_file.write_text(yaml.safe_dump(reordered, sort_keys=False))
    assert planned_jobs(workdir) == []

    # one new XSF file in a source folder -> its shard's ingest and the merge only
    new = "extra/cell-new.xsf"
    write_xsf(workdir / new, energy=-6.5, z=0.05)
    k = shard_of(new, 3)
    assert job_set(planned_jobs(workdir)) == Counter(
        {("ingest", k): 1, ("manifest", None): 1, ("all", None): 1})
    snakemake(workdir, "--cores", "2")
    rows = (results / "manifest" / "manifest.tsv").read_text().splitlines()
    assert len(rows) == 1 + 10 and any(row.startswith(new + "\t") for row in rows)
    assert planned_jobs(workdir) == []

    # a changed ingest setting (max_energy) -> every shard's ingest and the merge
    assert job_set(planned_jobs(workdir, "--config", "max_energy=10.0")) == Counter(
        {("ingest", 0): 1, ("ingest", 1): 1, ("ingest", 2): 1,
         ("manifest", None): 1, ("all", None): 1})


# ---------------------------------------------------------------- the conda environment

# conda-forge names of the package's PyPI dependencies
_CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base",
                "snakemake": "snakemake-minimal"}


def test_conda_env_has_every_dependency_and_installs_this_checkout(tmp_path):
    """envs/nnpflow.yaml (for --sdm conda) lists the package's dependencies and
    pip-installs this checkout.  Conda itself cannot run here; pip's side of the
    environment is checked for real: the requirement line, with ${NNPFLOW_ROOT} set
    as the Snakefile sets it, resolves to this checkout, editable."""
    import tomllib
    env = yaml.safe_load((REPO / "envs" / "nnpflow.yaml").read_text())
    assert "conda-forge" in env["channels"]
    names = {re.split(r"[\s<>=!]", dep, maxsplit=1)[0]
             for dep in env["dependencies"] if isinstance(dep, str)}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[\s<>=!\[]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    missing = {w for w in wanted if _CONDA_NAMES.get(w, w) not in names}
    assert not missing, f"envs/nnpflow.yaml lacks {sorted(missing)}"
    assert "pip" in names
    pip_lines = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict)][0]
    assert "NNPFLOW_ROOT" in (REPO / "Snakefile").read_text()
    req = tmp_path / "requirements.txt"
    req.write_text("\n".join(pip_lines) + "\n")
    import importlib.util
    # without setuptools in this environment, pip fetches it for an isolated build
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", *isolation,
         "--quiet", "--report", "-", "-r", str(req)],
        env=dict(os.environ, NNPFLOW_ROOT=str(REPO)), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    [item] = report["install"]
    assert item["metadata"]["name"] == "nnpflow"
    assert item["download_info"]["url"] == REPO.as_uri()
    assert item["download_info"]["dir_info"].get("editable") is True
