"""The Snakemake workflow: the stage adapter, planning, an end-to-end run, reruns.

The adapter tests call ``nnpflow.stages.run_from_snakemake`` in-process with a
stand-in for Snakemake's ``snakemake`` object.  The workflow tests (marker
``workflow``) run the real ``snakemake`` on a copy of the workflow in a temporary
folder with a tiny configuration and read what ``snakemake --dry-run`` plans.  The
tiny configuration trains a one-layer model for two epochs with two data-parallel
processes (``training.devices: 2``), so one completed run covers the whole DAG,
distributed training included, in well under a minute.
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

import h5py
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


def test_adapter_sends_the_stage_processes_output_to_the_log(tmp_path, monkeypatch):
    """What libraries print (C code writing to file descriptor 2, such as HDF5's
    diagnostics; torch's warnings; child processes) lands in the rule's log, in order
    with the stage's own logging; warnings still show on the console."""
    module = types.ModuleType("nnpflow.stages.noisy")

    def run(out):
        logging.getLogger("nnpflow.stages.noisy").info("first, from logging")
        os.write(2, b"raw bytes on fd 2, as C libraries write them\n")
        os.write(1, b"print to stdout\n")  # (pytest replaces sys.stdout; a job's is fd 1)
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child stderr\\n')"],
                       check=True)
        logging.getLogger("nnpflow.stages.noisy").warning("last, a warning")
        Path(out).write_text("ok\n")

    module.run = run
    monkeypatch.setitem(sys.modules, "nnpflow.stages.noisy", module)
    log = tmp_path / "job.log"
    log.write_text("left over from an earlier run\n")
    console = tmp_path / "console.txt"
    saved = os.dup(2)
    with open(console, "w") as fh:
        os.dup2(fh.fileno(), 2)  # stand in for the console Snakemake runs the job in
    try:
        run_from_snakemake(_job("noisy", output=_Named(out=str(tmp_path / "o.txt")),
                                log=[str(log)]))
        os.write(2, b"after the job\n")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    text = log.read_text()
    assert "left over" not in text
    order = ["first, from logging", "raw bytes on fd 2", "print to stdout", "child stderr",
             "last, a warning", "rule noisy: done"]
    positions = [text.find(line) for line in order]
    assert -1 not in positions and positions == sorted(positions), text
    shown = console.read_text()
    assert "last, a warning" in shown and "after the job" in shown
    assert "raw bytes" not in shown and "first, from logging" not in shown


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
def workdir(tmp_path, copy_workflow):
    """A copy of the workflow with a tiny config: 6 example structures, 3 shards,
    and a source folder ``extra/`` with 3 hand-written XSF files."""
    cfg = copy_workflow(tmp_path)
    cfg["example"].update(n_structures=6, archive_fraction=0.5, seed=3)
    cfg["database"]["shards"] = 3
    cfg["sources"] = [{"path": "extra"}]
    tiny_training(cfg)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for i in range(3):
        write_xsf(tmp_path / "extra" / f"cell-{i}.xsf", energy=-7.0 - 0.1 * i, z=0.1 * i)
    return tmp_path


_NO_SLURM: list[str] = []


def _no_slurm_bin() -> str:
    """A folder whose ``scontrol`` fails at once.  These tests run Snakemake's local
    executor only, but the installed SLURM executor plugin runs ``scontrol show
    config`` whenever Snakemake starts (for a help text), which waits ~9 s for a
    controller where SLURM is installed but not running; with this folder first on
    PATH every snakemake call here starts in ~3 s instead."""
    if not _NO_SLURM:
        import tempfile
        folder = Path(tempfile.mkdtemp(prefix="nnpflow-no-slurm-"))
        (folder / "scontrol").write_text("#!/bin/sh\nexit 1\n")
        (folder / "scontrol").chmod(0o755)
        _NO_SLURM.append(str(folder))
    return _NO_SLURM[0]


def snakemake(workdir: Path, *args: str, timeout: int = 300) -> str:
    """Run snakemake in ``workdir``; returns stdout + stderr, fails the test on error."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PATH=os.pathsep.join([_no_slurm_bin(), os.environ.get("PATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{out[-5000:]}"
    return out


_JOB_HEAD = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def _job_key(wildcards: str):
    """What tells jobs of one rule apart: the shard (int), ``model/member`` for a
    training job, ``model`` for an evaluation job, or None."""
    found = dict(re.findall(r"\b(\w+)=([^,\s]+)", wildcards))
    if "shard" in found:
        return int(found["shard"])
    if "member" in found:
        return f"{found['model']}/{found['member']}"
    return found.get("model")


def planned_jobs(workdir: Path, *args: str) -> list[dict]:
    """The jobs ``snakemake --dry-run`` plans: [{rule, shard, input, threads}], in
    printed order (``shard`` is the key of :func:`_job_key`)."""
    out = snakemake(workdir, "--dry-run", "--cores", "2", *args)
    if "Nothing to be done" in out:
        return []
    jobs = jobs_in(out)
    assert jobs, f"could not read the planned jobs from:\n{out[-3000:]}"
    return jobs


def jobs_in(out: str) -> list[dict]:
    """The jobs a snakemake output (a dry run's or a real run's) lists, in order."""
    jobs: list[dict] = []
    for line in out.splitlines():
        head = _JOB_HEAD.match(line.strip())
        if head:
            jobs.append({"rule": head.group(1), "shard": None, "input": [], "threads": 1})
        elif jobs and line.strip().startswith("wildcards:"):
            jobs[-1]["shard"] = _job_key(line.split(":", 1)[1])
        elif jobs and line.strip().startswith("threads:"):
            jobs[-1]["threads"] = int(line.split(":", 1)[1])
        elif jobs and line.strip().startswith("resources:"):
            jobs[-1]["resources"] = line.split(":", 1)[1].strip()
        elif jobs and line.strip().startswith("reason:"):
            jobs[-1]["reason"] = line.split(":", 1)[1].strip()
        elif jobs and line.strip().startswith("input:"):
            jobs[-1]["input"] = [p.strip() for p in line.split(":", 1)[1].split(",")]
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


DATA_JOBS = {("ingest", 0): 1, ("ingest", 1): 1, ("ingest", 2): 1, ("manifest", None): 1,
             ("build", 0): 1, ("build", 1): 1, ("build", 2): 1, ("merge", None): 1,
             ("split", None): 1, ("all", None): 1}
#: training and evaluation of the tiny configuration's one model
MODEL_JOBS = {("train", "ann/0"): 1, ("evaluate", "ann"): 1, ("summary", None): 1}

#: the tiny model of the workflow tests: trains in about a second
TINY_MODELS = {"ann": {"architecture": "ann", "hidden": [[4, "tanh"]], "active": True,
                       "committee": 1, "training": {"devices": 2}}}
TINY_TRAINING = {"epochs": 2, "batch_size": 4, "learning_rate": 0.01, "schedule": "constant",
                 "patience": 0, "device": "cpu", "seed": 1}


def tiny_training(cfg: dict) -> None:
    """Give a loaded config.yaml the tiny model and training settings."""
    cfg["models"] = json.loads(json.dumps(TINY_MODELS))
    cfg["training"].update(TINY_TRAINING)


@pytest.mark.workflow
def test_dry_run_plans_every_stage_and_assigns_files_to_shards(workdir):
    jobs = planned_jobs(workdir)
    assert job_set(jobs) == Counter({("example", None): 1, ("species", None): 1, **DATA_JOBS,
                                     **MODEL_JOBS})
    plain = [f"extra/cell-{i}.xsf" for i in range(3)] + \
        [f"results/example/xsf/example-{i:04d}.xsf" for i in range(3)]
    archive = "results/example/archive.tar.bz2"
    for job in jobs:
        k = job["shard"]
        if job["rule"] == "ingest":
            # a plain file is read by exactly the shard its path hashes to; an archive by all
            assert sorted(job["input"]) == sorted(
                [p for p in plain if shard_of(p, 3) == k] + [archive]), job
        elif job["rule"] == "build":
            # species: null -> the species checkpoint's file, an input of every build job
            # (before the first run Snakemake shows only that checkpoint target)
            assert job["input"] == ["results/manifest/species.txt (update)"], job
        elif job["rule"] == "species":
            assert job["input"] == ["results/manifest/manifest.json"], job
        elif job["rule"] == "split":
            assert job["input"] == ["results/manifest/manifest.json",
                                    "results/manifest/manifest.tsv"], job
        elif job["rule"] == "train":
            assert job["input"] == ["results/database/database.h5",
                                    "results/split/split.json"], job
            # training.devices: 2 -> two processes, one thread each; no GPU on device cpu
            assert job["threads"] == 2 and "gpu=0" in job["resources"], job
        elif job["rule"] == "evaluate":
            assert job["input"] == ["results/database/database.h5", "results/split/split.json",
                                    "results/models/ann/member_0/model.pt",
                                    "results/models/ann/member_0/history.csv"], job


@pytest.mark.workflow
def test_gpu_training_asks_for_one_gpu_per_process(workdir):
    """device: cuda makes each training job of that model ask for `devices` GPUs
    (the SLURM plugin turns the `gpu` resource into --gpus); a committee has one job
    per member; inactive models are neither trained nor evaluated."""
    def change(cfg):
        cfg["models"]["gpu"] = {"architecture": "ann", "hidden": [[4, "tanh"]],
                                "committee": 2, "training": {"device": "cuda", "devices": 2}}
        cfg["models"]["off"] = {"architecture": "ann", "hidden": [[4, "tanh"]], "active": False}
    edit_config(workdir, change)
    jobs = [j for j in planned_jobs(workdir) if j["rule"] in ("train", "evaluate")]
    assert job_set(jobs) == Counter({("train", "ann/0"): 1, ("evaluate", "ann"): 1,
                                     ("train", "gpu/0"): 1, ("train", "gpu/1"): 1,
                                     ("evaluate", "gpu"): 1})
    for job in jobs:
        if job["rule"] == "train":
            assert ("gpu=2" if job["shard"].startswith("gpu/") else "gpu=0") in job["resources"]


# ---------------------------------------------------------------- one completed run

#: the tiny run's filter settings (eV per atom / eV); max_energy keeps every structure
ATOMIC_ENERGIES = {"Cu": -0.25, "Au": -0.5, "Pt": -0.75}
MAX_ENERGY = 100.0
SPECIES = ["Cu", "Pt", "Au"]


@pytest.fixture(scope="module")
def completed(tmp_path_factory, copy_workflow):
    """The whole DAG run once to completion (``snakemake --cores 2``) on a tiny
    configuration: 6 example structures and 3 files in ``extra/``, 3 shards, species
    given (so each build job reads its own shard only), a filter that keeps all, and
    the tiny model trained with two data-parallel processes and evaluated."""
    root = tmp_path_factory.mktemp("completed")
    cfg = copy_workflow(root)
    cfg["example"].update(n_structures=6, archive_fraction=0.5, seed=3)
    cfg["database"]["shards"] = 3
    cfg["sources"] = [{"path": "extra"}]
    cfg.update(species=SPECIES, atomic_energies=ATOMIC_ENERGIES, max_energy=MAX_ENERGY)
    cfg["split"] = {"validation": 0.2, "test": 1, "seed": 7}
    tiny_training(cfg)
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for i in range(3):
        write_xsf(root / "extra" / f"cell-{i}.xsf", energy=-7.0 - 0.1 * i, z=0.1 * i)
    snakemake(root, "--cores", "2")
    return root


@pytest.fixture
def scenario(completed, tmp_path):
    """A private copy of the completed run (outputs, Snakemake's metadata and file
    modification times preserved) to change and dry-run."""
    dest = tmp_path / "run"
    shutil.copytree(completed, dest, symlinks=True, copy_function=shutil.copy2)
    return dest


def edit_config(workdir: Path, change) -> None:
    path = workdir / "config" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    change(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def check_data_outputs(workdir: Path, n_structures: int, atomic_energies=ATOMIC_ENERGIES,
                       max_energy=MAX_ENERGY, species=SPECIES) -> None:
    """The data DAG's outputs agree with each other: database order = manifest order,
    one structures fingerprint in manifest.json, database.json and split.json, and
    the split is the stable split of the manifest's structures."""
    from nnpflow.database import DatabaseReader
    from nnpflow.io.manifest import read_manifest
    from nnpflow.splitting import load_split, make_stable_split
    results = workdir / "results"
    rows = read_manifest(results / "manifest" / "manifest.tsv")
    labels = [row["label"] for row in rows]
    assert len(labels) == n_structures
    summary = json.loads((results / "manifest" / "manifest.json").read_text())
    db_info = json.loads((results / "database" / "database.json").read_text())
    fp = summary["structures_fingerprint"]
    assert db_info["structures_fingerprint"] == fp
    assert summary["filter"] == db_info["filter"] == {"max_energy": max_energy,
                                                      "atomic_energies": atomic_energies}
    with DatabaseReader(results / "database" / "database.h5") as db:
        assert db.names() == labels
        assert db.structures_fingerprint == fp and db.fingerprint == db_info["fingerprint"]
        assert db.has_features and db.has_force_derivatives
        if species is not None:
            assert db.layout["feature_species"] == species
        split = load_split(results / "split" / "split.json", db, n_structures=len(db))
    cfg = yaml.safe_load((workdir / "config" / "config.yaml").read_text())["split"]
    want = make_stable_split(labels, [r["content_hash"] for r in rows], cfg["validation"],
                             cfg["test"], cfg["seed"], fp)
    assert split.counts == want.counts and sum(split.counts.values()) == n_structures
    assert all(split.counts[p] >= 1 for p in ("train", "validation", "test"))


def split_parts(workdir: Path) -> dict[str, str]:
    """{label: part} of the run's split.json."""
    from nnpflow.io.manifest import read_manifest
    results = workdir / "results"
    labels = [r["label"] for r in read_manifest(results / "manifest" / "manifest.tsv")]
    split = json.loads((results / "split" / "split.json").read_text())
    return {labels[i]: part for part, idx in split["indices"].items() for i in idx}


@pytest.mark.workflow
@pytest.mark.slow
def test_end_to_end_data_dag(completed, monkeypatch):
    results = completed / "results"
    labels = [row.split("\t")[0] for row in
              (results / "manifest" / "manifest.tsv").read_text().splitlines()[1:]]
    assert {f"extra/cell-{i}.xsf" for i in range(3)} <= set(labels)
    check_data_outputs(completed, 9)
    check_model_outputs(completed, 9)
    # one log and one benchmark per job
    for name in ("example", "manifest", "merge", "split", "train/ann/member_0", "evaluate/ann",
                 *(f"{stage}/shard_{k}" for stage in ("ingest", "build") for k in range(3))):
        assert (results / "logs" / f"{name}.log").stat().st_size > 0, name
        assert (results / "benchmarks" / f"{name}.tsv").exists(), name
    # training.devices: 2 ran two data-parallel processes inside the job
    train_log = (results / "logs" / "train" / "ann" / "member_0.log").read_text()
    assert "data-parallel training in 2 cpu processes (1 thread(s) each)" in train_log
    # rank 0's lines (appended by the worker process) and the job's own last line
    assert "epoch 2/2: train loss" in train_log and "rule train: done in" in train_log
    assert "nnpflow.stages.build.run(" in (results / "logs" / "build" / "shard_0.log").read_text()
    # raw shards (ingest) hold the structures without features
    from nnpflow.database import DatabaseReader
    with DatabaseReader(results / "ingest" / "shard_0.h5") as raw:
        assert not raw.has_features and len(raw) > 0
    # the training database is an index over the kept shards: their data on disk once
    from nnpflow.database import database_info
    info = database_info(results / "database" / "database.h5")
    assert info["linked_files"] == [str(results / "database" / f"shard_{k}.h5")
                                    for k in range(3)]
    with h5py.File(results / "database" / "database.h5") as h5:
        own = []
        h5.visititems(lambda name, obj: own.append(name)
                      if isinstance(obj, h5py.Dataset) else None)
        assert own == []

    # a Python-API build of the same sources (spec 000's HDF5StructureDataset, one
    # worker process per shard, the sources in the workflow's order) gives the same
    # database order and the same structures fingerprint
    from nnpflow.datasets import HDF5StructureDataset
    from nnpflow.descriptors import ChebyshevDescriptor
    cfg = yaml.safe_load((completed / "config" / "config.yaml").read_text())
    monkeypatch.chdir(completed)
    sources = sorted([f"extra/cell-{i}.xsf" for i in range(3)]
                     + [str(p.relative_to(completed)) for p in
                        (results / "example" / "xsf").glob("*.xsf")]
                     + ["results/example/archive.tar.bz2"])
    descriptor = ChebyshevDescriptor(species=SPECIES, **cfg["descriptor"])
    with HDF5StructureDataset(descriptor, completed / "api.h5", sources=sources, mode="build",
                              max_energy=MAX_ENERGY,
                              atomic_energies=ATOMIC_ENERGIES) as dataset:
        dataset.build_database(build_workers=3, persist_features=True)
        summary = json.loads((results / "manifest" / "manifest.json").read_text())
        assert dataset.structures_fingerprint == summary["structures_fingerprint"]
        with DatabaseReader(completed / "api.h5") as api:
            assert api.names() == labels

    # nothing changed -> nothing to do
    assert planned_jobs(completed) == []


def check_model_outputs(workdir: Path, n_structures: int) -> None:
    """The trained model and its evaluation: metrics for each part with the split's
    counts, per-species and worst-structure tables, the three plots."""
    from nnpflow.splitting import load_split
    from nnpflow.training.potential import TorchANNPotential, read_history_csv
    results = workdir / "results"
    member = results / "models" / "ann" / "member_0"
    pot = TorchANNPotential.from_file(member / "model.pt")
    assert pot.training_info["config"]["seed"] == TINY_TRAINING["seed"]
    assert [row["epoch"] for row in read_history_csv(member / "history.csv")] == [1, 2]
    assert (member / "checkpoints" / "checkpoint_last.pt").is_file()
    split = load_split(results / "split" / "split.json")
    folder = results / "evaluation" / "ann"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["parts"] == ["train", "validation", "test"]
    for part in metrics["parts"]:
        m = metrics[part]
        assert m["n_structures"] == len(split.indices[part])
        assert m["energy_rmse_per_atom"] >= m["energy_mae_per_atom"] > 0
        assert m["force_rmse"] >= m["force_mae"] > 0
    assert sum(metrics[p]["n_structures"] for p in metrics["parts"]) == n_structures
    assert metrics["database"]["structures_fingerprint"] == split.structures_fingerprint
    per_species = (folder / "per_species.csv").read_text().splitlines()
    assert per_species[0] == "split,species,n_atoms,force_rmse,force_mae"
    worst = (folder / "worst_structures.csv").read_text().splitlines()
    assert len(worst) == 1 + 2 * n_structures      # fewer structures than rows asked for
    for plot in ("parity_energy", "parity_forces", "learning_curve", "md_check"):
        assert (folder / f"{plot}.png").read_bytes()[:4] == b"\x89PNG", plot
    # the NVE checks: the smallest test structures (at most 3), 200 steps each
    checks = metrics["physical_checks"]
    assert checks["part"] == "test" and checks["settings"]["steps"] == 200
    assert len(checks["structures"]) == min(3, len(split.test))
    for run in checks["structures"]:
        assert run["finite"] and run["n_atoms"] >= 1 and run["energy_drift"] is not None
    summary = (results / "evaluation" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("model,kind,committee,part") and summary[1].startswith("ann,")


@pytest.mark.workflow
@pytest.mark.slow
def test_report_holds_the_plots(scenario):
    """snakemake --report builds one HTML file with the evaluation's plots, tables and
    captions (in its own copy: the report run records nothing that changes reruns)."""
    snakemake(scenario, "--report", "report.html")
    html = (scenario / "report.html").read_text(errors="replace")
    for name in ("parity_energy.png", "parity_forces.png", "learning_curve.png",
                 "metrics.json", "per_species.csv", "worst_structures.csv", "manifest.tsv",
                 "md_check.png", "summary.csv"):
        assert name in html, name
    assert "Energy parity plot of model" in html          # a caption, rendered


@pytest.mark.workflow
@pytest.mark.slow
def test_reordered_config_and_threads_rerun_nothing(scenario):
    def reorder(cfg):
        reordered = {key: cfg[key] for key in reversed(list(cfg))}
        reordered["descriptor"] = dict(reversed(list(cfg["descriptor"].items())))
        reordered["atomic_energies"] = dict(reversed(list(cfg["atomic_energies"].items())))
        reordered["database"] = dict(cfg["database"], threads=2)  # threads: no trigger
        cfg.clear()
        cfg.update(reordered)
    edit_config(scenario, reorder)
    assert planned_jobs(scenario) == []


@pytest.mark.workflow
@pytest.mark.slow
def test_descriptor_change_rebuilds_every_shard_but_not_ingest_or_split(scenario):
    edit_config(scenario, lambda cfg: cfg["descriptor"].update(rad_cutoff=4.5))
    assert job_set(planned_jobs(scenario)) == Counter(
        {("build", 0): 1, ("build", 1): 1, ("build", 2): 1, ("merge", None): 1,
         **MODEL_JOBS, ("all", None): 1})


@pytest.mark.workflow
@pytest.mark.slow
def test_split_seed_change_redraws_the_split_and_retrains(scenario):
    edit_config(scenario, lambda cfg: cfg["split"].update(seed=8))
    assert job_set(planned_jobs(scenario)) == Counter(
        {("split", None): 1, **MODEL_JOBS, ("all", None): 1})


@pytest.mark.workflow
@pytest.mark.slow
def test_max_energy_change_reruns_every_ingest_and_downstream(scenario):
    edit_config(scenario, lambda cfg: cfg.update(max_energy=50.0))
    assert job_set(planned_jobs(scenario)) == Counter({**DATA_JOBS, **MODEL_JOBS})


@pytest.mark.workflow
@pytest.mark.slow
def test_fitted_atomic_energies_are_fitted_by_the_split_and_reach_the_model(scenario):
    """atomic_energies: fit (max_energy off): ingest runs again without references, the
    split fits them on its training part, training uses them."""
    edit_config(scenario, lambda cfg: cfg.update(atomic_energies="fit", max_energy=None))
    assert job_set(planned_jobs(scenario)) == Counter({**DATA_JOBS, **MODEL_JOBS})
    snakemake(scenario, "--cores", "2", "results/split/split.json")
    from nnpflow.splitting import load_split
    split = load_split(scenario / "results" / "split" / "split.json")
    fit = split.atomic_energies_fit
    assert sorted(fit["atomic_energies"]) == sorted(SPECIES)
    assert fit["n_structures"] == len(split.train)
    assert "atomic_energies: fit on" in (scenario / "results/logs/split.log").read_text()
    # the same settings again: nothing left to do for the data stages
    assert planned_jobs(scenario, "results/split/split.json") == []


@pytest.mark.workflow
@pytest.mark.slow
def test_learning_rate_change_retrains_and_reevaluates_that_model_only(scenario):
    edit_config(scenario, lambda cfg: cfg["training"].update(learning_rate=0.02))
    assert job_set(planned_jobs(scenario)) == Counter({**MODEL_JOBS, ("all", None): 1})


@pytest.mark.workflow
@pytest.mark.slow
def test_models_added_or_grown_train_only_what_is_new(scenario):
    def add_model(cfg):
        cfg["models"]["second"] = {"architecture": "ann", "hidden": [[3, "tanh"]],
                                   "training": {"learning_rate": 0.005}}
        cfg["models"]["off"] = {"architecture": "ann", "hidden": [[3, "tanh"]],
                                "active": False}
    edit_config(scenario, add_model)
    assert job_set(planned_jobs(scenario)) == Counter(
        {("train", "second/0"): 1, ("evaluate", "second"): 1, ("summary", None): 1,
         ("all", None): 1})
    # a larger committee trains the new member only; the evaluation takes in both
    edit_config(scenario, lambda cfg: cfg["models"]["ann"].update(committee=2))
    assert job_set(planned_jobs(scenario)) == Counter(
        {("train", "second/0"): 1, ("evaluate", "second"): 1, ("train", "ann/1"): 1,
         ("evaluate", "ann"): 1, ("summary", None): 1, ("all", None): 1})


@pytest.mark.workflow
@pytest.mark.slow
def test_evaluation_settings_rerun_the_evaluation_only(scenario):
    # fewer plots: the outputs that remain are up to date
    edit_config(scenario, lambda cfg: cfg["evaluate"].update(plots=False))
    assert planned_jobs(scenario) == []
    edit_config(scenario, lambda cfg: cfg["evaluate"].update(splits=["test"]))
    assert job_set(planned_jobs(scenario)) == Counter({("evaluate", "ann"): 1,
                                                       ("summary", None): 1, ("all", None): 1})
    edit_config(scenario, lambda cfg: cfg["evaluate"].update(physical_checks={"steps": 50}))
    assert job_set(planned_jobs(scenario)) == Counter({("evaluate", "ann"): 1,
                                                       ("summary", None): 1, ("all", None): 1})


@pytest.mark.workflow
@pytest.mark.slow
def test_example_change_regenerates_it_and_reruns_everything_after(scenario):
    # new example files: every shard reads the example archive, and the structures
    # (hence the split) change; the hand-written sources are read again with them
    edit_config(scenario, lambda cfg: cfg["example"].update(seed=4))
    assert job_set(planned_jobs(scenario)) == Counter(
        {("example", None): 1, **DATA_JOBS, **MODEL_JOBS})


@pytest.mark.workflow
@pytest.mark.slow
def test_new_file_reruns_its_shard_and_the_merges_only(scenario):
    new = "extra/cell-new.xsf"
    write_xsf(scenario / new, energy=-6.5, z=0.05)
    k = shard_of(new, 3)
    jobs = planned_jobs(scenario)
    assert job_set(jobs) == Counter(
        {("ingest", k): 1, ("build", k): 1, ("manifest", None): 1, ("merge", None): 1,
         ("split", None): 1, **MODEL_JOBS, ("all", None): 1})
    # with species given, a build job reads its own raw shard only
    [build] = [job for job in jobs if job["rule"] == "build"]
    assert build["input"] == [f"results/ingest/shard_{k}.h5"]
    untouched = [scenario / "results" / "database" / f"shard_{j}.h5" for j in range(3) if j != k]
    before = [p.stat().st_mtime_ns for p in untouched]
    parts_before = split_parts(scenario)

    # run the data stages (the end-to-end test covers training and evaluation)
    snakemake(scenario, "--cores", "2", "results/database/database.json",
              "results/split/split.json")
    check_data_outputs(scenario, 10)
    labels = (scenario / "results" / "manifest" / "manifest.tsv").read_text()
    assert f"\n{new}\t" in labels
    assert [p.stat().st_mtime_ns for p in untouched] == before
    # the stable split: every old structure keeps its part
    parts_after = split_parts(scenario)
    assert {lab: parts_after[lab] for lab in parts_before} == parts_before
    assert set(parts_after) - set(parts_before) == {new}
    # what is left: the model, trained on the new split, and its evaluation
    assert job_set(planned_jobs(scenario)) == Counter({**MODEL_JOBS, ("all", None): 1})


# ------------------------------------------- species inferred (species: null): incremental

XSF_OF = XSF.replace("Au  1.80", "{species}  1.80")


@pytest.fixture(scope="module")
def inferred_species_run(tmp_path_factory, copy_workflow):
    """The data stages (manifest to database and split) run once with species: null:
    6 example structures, 3 files in ``extra/``, 3 shards."""
    root = tmp_path_factory.mktemp("inferred")
    cfg = copy_workflow(root)
    cfg["example"].update(n_structures=6, archive_fraction=0.5, seed=3)
    cfg["database"]["shards"] = 3
    cfg["sources"] = [{"path": "extra"}]
    tiny_training(cfg)
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for i in range(3):
        write_xsf(root / "extra" / f"cell-{i}.xsf", energy=-7.0 - 0.1 * i, z=0.1 * i)
    snakemake(root, "--cores", "2", *DATA_TARGETS)
    return root


DATA_TARGETS = ("results/database/database.json", "results/split/split.json")


def _run_data_stages(workdir: Path) -> tuple[JobSet, str]:
    out = snakemake(workdir, "--cores", "2", *DATA_TARGETS)
    return job_set(jobs_in(out)), out


@pytest.mark.workflow
@pytest.mark.slow
def test_inferred_species_new_file_rebuilds_its_shard_only(inferred_species_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(inferred_species_run, run, symlinks=True, copy_function=shutil.copy2)
    species = run / "results" / "manifest" / "species.txt"
    assert species.read_text() == "Cu\nPt\nAu\n"        # by atomic number
    shards = [run / "results" / "database" / f"shard_{j}.h5" for j in range(3)]
    before = [p.stat().st_mtime_ns for p in shards]
    new = "extra/cell-new.xsf"
    (run / new).write_text(XSF_OF.format(energy=-6.5, z=0.05, species="Au"))
    k = shard_of(new, 3)
    ran, _ = _run_data_stages(run)
    assert ran == Counter({("ingest", k): 1, ("manifest", None): 1, ("species", None): 1,
                           ("build", k): 1, ("merge", None): 1, ("split", None): 1}), ran
    after = [p.stat().st_mtime_ns for p in shards]
    assert [a == b for a, b in zip(after, before)] == [j != k for j in range(3)]
    assert species.read_text() == "Cu\nPt\nAu\n"
    assert "species unchanged (Cu Pt Au)" in (run / "results/logs/species.log").read_text()
    check_data_outputs(run, 10, atomic_energies={}, max_energy=None)
    assert planned_jobs(run, *DATA_TARGETS) == []


@pytest.mark.workflow
@pytest.mark.slow
def test_inferred_species_new_species_rebuilds_every_shard_and_says_why(inferred_species_run,
                                                                        tmp_path):
    run = tmp_path / "run"
    shutil.copytree(inferred_species_run, run, symlinks=True, copy_function=shutil.copy2)
    new = "extra/cell-silver.xsf"
    (run / new).write_text(XSF_OF.format(energy=-6.5, z=0.05, species="Ag"))
    k = shard_of(new, 3)
    ran, out = _run_data_stages(run)
    assert ran == Counter({("ingest", k): 1, ("manifest", None): 1, ("species", None): 1,
                           ("build", 0): 1, ("build", 1): 1, ("build", 2): 1,
                           ("merge", None): 1, ("split", None): 1}), ran
    why = "the species changed from Cu Pt Au to Cu Ag Pt Au (new: Ag): every database shard " \
          "is rebuilt"
    assert why in (run / "results/logs/species.log").read_text()
    assert why in out                                  # a warning: Snakemake's output shows it
    assert (run / "results/manifest/species.txt").read_text() == "Cu\nAg\nPt\nAu\n"
    from nnpflow.database import DatabaseReader
    with DatabaseReader(run / "results/database/database.h5") as db:
        assert db.layout["feature_species"] == ["Cu", "Ag", "Pt", "Au"]
        assert len(db) == 10


# ---------------------------------------------------------------- the train rule's checkpoints


def test_train_job_resumes_its_checkpoints_only_with_the_same_code(tmp_path, caplog):
    """The rule passes its code fingerprint as ``code_version``: a rerun with the same
    code resumes the finished run (no epoch is trained again), a rerun after a code
    change sets the checkpoints aside and trains anew (same data, same settings)."""
    from nnpflow.database import DatabaseReader, write_database
    from nnpflow.splitting import make_split, write_split
    from nnpflow.stages.train import run as train
    from nnpflow.training.potential import read_history_csv
    from test_ann_data import emt_cells, small_descriptor
    db = tmp_path / "database.h5"
    write_database(db, emt_cells(8, seed=1), descriptor=small_descriptor(),
                   persist_features=True, persist_force_derivatives=True)
    with DatabaseReader(db) as reader:
        write_split(tmp_path / "split.json",
                    make_split(len(reader), 2, 1, 0, reader.structures_fingerprint))
    model_cfg = dict(TINY_MODELS["ann"])
    for key in ("active", "committee", "training"):   # as the rule passes it
        model_cfg.pop(key)
    training = {**TINY_TRAINING, "devices": 1}
    out = tmp_path / "member_0"

    def run(code_version):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nnpflow"):
            train(str(db), str(tmp_path / "split.json"), str(out / "model.pt"),
                  str(out / "history.csv"), "ann", model_cfg, training, 0,
                  code_version=code_version)
        return caplog.text

    run("code-a")
    assert (out / "checkpoints" / "code_version.txt").read_text() == "code-a\n"
    text = run("code-a")
    assert "resumed from" in text and "epoch 1/2" not in text
    text = run("code-b")
    assert "written by other code (version code-a, now code-b)" in text
    assert "resumed from" not in text and "epoch 1/2" in text
    assert [r["epoch"] for r in read_history_csv(out / "history.csv")] == [1, 2]
    assert (out / "checkpoints" / "code_version.txt").read_text() == "code-b\n"


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
