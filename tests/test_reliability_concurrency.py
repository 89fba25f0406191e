"""Issue 8, concurrency: HDF5 datasets give identical samples in any number of
DataLoader worker processes (fork and spawn, persistent workers, a cache smaller
than a block, datasets opened and closed over and over beside live workers); two
workflow runs on one results folder are refused by Snakemake's lock, and after a
killed run ``--unlock`` and a rerun finish the work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Subset

from nnpflow import Structure
from nnpflow.database import DatabaseReader
from nnpflow.datasets import HDF5StructureDataset
from nnpflow.descriptors import ChebyshevDescriptor

REPO = Path(__file__).resolve().parents[1]


def cells(n: int, seed: int = 0) -> list[Structure]:
    """4-atom fcc Cu/Au cells of random size, every third without forces."""
    from ase.build import bulk
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.6, 3.9), cubic=True)
        if i % 4 == 0:
            atoms = atoms.repeat((2, 1, 1))
        atoms.set_chemical_symbols(np.where(rng.random(len(atoms)) < 0.5, "Au", "Cu").tolist())
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        s = Structure.from_ase(atoms, name=f"c{i:03d}").copy(
            energy=float(rng.normal(-3.0 * len(atoms), 0.3)),
            forces=rng.normal(size=(len(atoms), 3)))
        out.append(s if i % 3 else s.copy(forces=None))
    return out


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """37 structures (odd sizes: blocks of 8 do not divide it) with features and
    derivatives, written in blocks of 8 structures."""
    from nnpflow.database.build import build_sharded
    d = ChebyshevDescriptor(species=["Cu", "Au"], rad_order=3, rad_cutoff=4.0, ang_order=1,
                            ang_cutoff=3.0)
    path = tmp_path_factory.mktemp("conc") / "db.h5"
    build_sharded(cells(37, seed=4), path, d, block_structures=8)
    return path


def reference_samples(path: Path) -> dict[int, dict]:
    """Every sample read by a fresh reader without any cache, in this process."""
    ds = HDF5StructureDataset(None, path, mode="load", in_memory_cache_size=0)
    out = {i: ds[i] for i in range(len(ds))}
    ds.close()
    return out


def assert_sample_equal(a: dict, b: dict) -> None:
    assert a["name"] == b["name"] and a["index"] == b["index"]
    for key in ("features", "positions", "species_index"):
        assert torch.equal(a[key], b[key]), key
    assert a["energy"] == b["energy"] and a["use_forces"] == b["use_forces"]
    assert (a["forces"] is None) == (b["forces"] is None)
    if a["forces"] is not None:
        assert torch.equal(a["forces"], b["forces"])
    assert (a["derivatives"] is None) == (b["derivatives"] is None)
    if a["derivatives"] is not None:
        g = torch.linspace(-1, 1, a["features"].numel(), dtype=torch.float64).reshape(
            a["features"].shape)
        assert torch.equal(a["derivatives"].forces(g), b["derivatives"].forces(g))


def _as_list(batch):
    return batch  # collate_fn: keep the sample dicts as they are


def loader_samples(dataset, **kwargs) -> list[dict]:
    loader = DataLoader(dataset, batch_size=5, collate_fn=_as_list, **kwargs)
    return [s for batch in loader for s in batch]


@pytest.mark.parametrize("workers, cache", [(0, 0), (1, 3), (2, 0), (2, 5), (2, 2048)])
def test_shuffled_epochs_in_workers_equal_a_fresh_read(database, workers, cache):
    """Shuffled epochs with caches of no, a partial and a whole block and of the whole
    database: every sample is the same as a fresh uncached read."""
    ref = reference_samples(database)
    ds = HDF5StructureDataset(None, database, mode="load", in_memory_cache_size=cache)
    ds[3]  # the parent's handle and cache are live before the workers fork
    gen = torch.Generator().manual_seed(workers * 100 + cache)
    seen = []
    for _ in range(2):
        got = loader_samples(ds, num_workers=workers, shuffle=True, generator=gen)
        assert sorted(s["index"] for s in got) == list(range(len(ref)))
        for s in got:
            assert_sample_equal(s, ref[s["index"]])
        seen.append([s["index"] for s in got])
    assert seen[0] != seen[1]  # the epochs really were shuffled differently
    ds.close()


def test_persistent_workers_beside_datasets_opened_and_closed_over_and_over(database):
    ref = reference_samples(database)
    ds = HDF5StructureDataset(None, database, mode="load", in_memory_cache_size=4)
    subset = Subset(ds, list(range(2, 35)))
    loader = DataLoader(subset, batch_size=4, collate_fn=_as_list, num_workers=2,
                        persistent_workers=True, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for epoch in range(3):
        got = [s for batch in loader for s in batch]
        assert sorted(s["index"] for s in got) == list(range(2, 35))
        for s in got:
            assert_sample_equal(s, ref[s["index"]])
        # between epochs: the parent closes its handle, and other datasets on the same
        # file are opened, read and closed while the workers keep theirs open
        ds.close()
        for k in range(5):
            with HDF5StructureDataset(None, database, mode="load",
                                      in_memory_cache_size=k) as other:
                i = (7 * epoch + 3 * k) % len(other)
                assert_sample_equal(other[i], ref[i])
        with DatabaseReader(database, cache_size=0) as reader:
            assert len(reader) == len(ref)
    del loader


def test_spawned_worker_reopens_the_file(database):
    """With the spawn start method the dataset travels pickled; the worker opens its
    own read-only handle and gives the same samples."""
    ref = reference_samples(database)
    ds = HDF5StructureDataset(None, database, mode="load", in_memory_cache_size=8)
    ds[0]
    got = loader_samples(ds, num_workers=1, multiprocessing_context="spawn")
    assert [s["index"] for s in got] == list(range(len(ref)))
    for s in got:
        assert_sample_equal(s, ref[s["index"]])
    ds.close()


# ----------------------------------------------------------------- the workflow lock

#: the first stages only: enough to hold the lock and to show the rerun finishing
TARGETS = ("results/manifest/manifest.tsv", "results/manifest/manifest.json")


def _snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.workflow
@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused_and_unlock_recovers(tmp_path, copy_workflow):
    cfg = copy_workflow(tmp_path)
    cfg["example"].update(n_structures=12, seed=1)
    cfg["database"]["shards"] = 1
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", *TARGETS],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    locks = tmp_path / ".snakemake" / "locks"
    try:
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())):
            assert first.poll() is None, "the first run ended before it took the lock"
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        # freeze the first run while it holds the lock, however fast this machine is
        os.killpg(first.pid, signal.SIGSTOP)
        second = _snakemake(tmp_path, "--cores", "1", *TARGETS)
        assert first.poll() is None
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stdout + second.stderr
        # let the first run go on until a job is under way (Snakemake has marked its
        # outputs incomplete), then kill it as a crash would
        os.killpg(first.pid, signal.SIGCONT)
        incomplete = tmp_path / ".snakemake" / "incomplete"
        while not (incomplete.is_dir() and any(incomplete.iterdir())):
            assert first.poll() is None, "the first run ended before a job started"
            assert time.monotonic() < deadline + 120, "the first run started no job"
            time.sleep(0.02)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # a crash: the lock stays behind
        first.wait(60)
    assert any(incomplete.iterdir())  # a job was killed half-way
    assert any(locks.iterdir())  # what refuses the next run until --unlock
    assert "--unlock" in second.stdout + second.stderr  # and Snakemake says so
    unlock = _snakemake(tmp_path, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    assert not locks.exists() or not any(locks.iterdir())
    # the rerun redoes the job the killed run left incomplete (rerun-incomplete is on
    # in the workflow profile) and finishes
    rerun = _snakemake(tmp_path, "--cores", "2", *TARGETS)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    from nnpflow.io.manifest import read_manifest
    labels = [r["label"] for r in read_manifest(tmp_path / "results/manifest/manifest.tsv")]
    assert len(labels) == 12
    with DatabaseReader(tmp_path / "results/ingest/shard_0.h5") as raw:
        assert raw.names() == labels
    summary = json.loads((tmp_path / "results/manifest/manifest.json").read_text())
    assert summary["n_structures"] == 12 and summary["structures_fingerprint"] == \
        raw.structures_fingerprint
