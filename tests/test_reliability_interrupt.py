"""Issue 8, interrupted work: SIGKILL at chosen points of every database build
(the workflow's ingest, build and merge stages, ``HDF5StructureDataset.build_database``
with worker processes) leaves either no final file or a complete one, and a rerun
succeeds with the same result; every stage writes its outputs atomically, through a
temporary file next to the target, so Snakemake's incomplete-output handling never
meets a half-written file.

Each build runs in a forked child process that arms a *kill point*: the n-th call,
in the build's main process or in one of its workers, of a function every build goes
through (the writer's block flush, HDF5's object copy of the merge, ``os.fsync``,
the final ``os.replace``), where the process SIGKILLs itself just before or just
after the call.  A few kills after random delays complement them.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from nnpflow import Structure
from nnpflow.database import DatabaseReader
from nnpflow.database import writer as db_writer
from nnpflow.datasets import HDF5StructureDataset
from nnpflow.descriptors import ChebyshevDescriptor
from nnpflow.sources import SourceSpec
from nnpflow.stages import build as build_stage
from nnpflow.stages import example as example_stage
from nnpflow.stages import ingest as ingest_stage
from nnpflow.stages import manifest as manifest_stage
from nnpflow.stages import merge as merge_stage
from nnpflow.stages import split as split_stage

FORK = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
pytestmark = pytest.mark.skipif(FORK is None, reason="needs the fork start method")

DESCRIPTOR = {"rad_order": 3, "rad_cutoff": 4.0, "ang_order": 1, "ang_cutoff": 3.0,
              "min_cutoff": 0.55}
SPECIES = ["Cu", "Au"]
DATABASE_CFG = {"persist_features": True, "persist_force_derivatives": True,
                "compression": "gzip", "dtype": "float32", "block_structures": 8}


def cells(n: int, seed: int = 0, prefix: str = "c") -> list[Structure]:
    """``n`` rattled 4-atom fcc Cu/Au cells with energies and forces (no overlaps)."""
    from ase.build import bulk
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.6, 3.9), cubic=True)
        atoms.set_chemical_symbols(np.where(rng.random(4) < 0.5, "Au", "Cu").tolist())
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(Structure.from_ase(atoms, name=f"{prefix}{i:03d}").copy(
            energy=float(rng.normal(-12.0, 0.5)), forces=rng.normal(size=(4, 3))))
    return out


# ---------------------------------------------------------------- kill points

def arm(what: str, when: str, nth: int, role: str = "main") -> None:
    """SIGKILL this process (``role="main"``) or a worker forked from it
    (``role="worker"``) ``when`` ("before"/"after") the ``nth`` call of ``what``:
    ``flush`` (database writer block flush), ``copy`` (HDF5 object copy, a
    copying merge), ``link`` (an external link of the workflow's index merge),
    ``fsync``, ``replace:<name>`` (the rename onto ``<name>``) or ``move:<name>``
    (the rename of ``<name>``, e.g. the first shard becoming the build's output)."""
    main = os.getpid()
    count = {"n": 0}

    def wrap(owner, attr, match=lambda *a, **k: True):
        original = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            mine = (os.getpid() == main) == (role == "main")
            hit = False
            if mine and match(*args, **kwargs):
                count["n"] += 1
                hit = count["n"] == nth
            if hit and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            if hit and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        setattr(owner, attr, wrapper)

    if what == "flush":
        wrap(db_writer.DatabaseWriter, "_flush_buffer")
    elif what == "copy":
        wrap(h5py.Group, "copy")
    elif what == "link":                 # an external link of an index database
        wrap(h5py.Group, "__setitem__",
             lambda group, name, obj, *a, **k: isinstance(obj, h5py.ExternalLink))
    elif what.startswith("move:"):       # the rename of a file named <name> elsewhere
        name = what.split(":", 1)[1]
        wrap(os, "replace", lambda src, dst, *a, **k: Path(src).name == name)
    elif what == "fsync":
        wrap(os, "fsync")
    elif what.startswith("replace:"):
        name = what.split(":", 1)[1]
        wrap(os, "replace", lambda src, dst, *a, **k: Path(dst).name == name)
    else:  # pragma: no cover - guards the test's own table
        raise ValueError(what)


def _child(point, func, args):
    if point is not None:
        arm(*point)
    func(*args)
    os._exit(0)


def run_killed(point, func, *args, timeout: float = 120) -> int:
    """Run ``func(*args)`` in a forked child with kill point ``point`` (None: none);
    return the child's exit code (-9 when the kill point fired)."""
    proc = FORK.Process(target=_child, args=(point, func, args))
    proc.start()
    proc.join(timeout)
    if proc.exitcode is None:  # pragma: no cover - a hang is a failure, not a wait
        proc.kill()
        proc.join()
        pytest.fail(f"the build with kill point {point} did not finish in {timeout} s")
    return proc.exitcode


def run_and_kill_after(delay: float, func, *args) -> int:
    """Run ``func(*args)`` in a forked child and SIGKILL it after ``delay`` s."""
    proc = FORK.Process(target=_child, args=(None, func, args))
    proc.start()
    proc.join(delay)
    if proc.exitcode is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
    return proc.exitcode


def content(path: Path) -> tuple[list[str], list[str], bool, bool]:
    """What a complete database holds: labels, content hashes, persisted layout."""
    with DatabaseReader(path) as db:
        return db.names(), db.content_hashes(), db.has_features, db.has_force_derivatives


def assert_absent_or_complete(path: Path, reference) -> bool:
    """The final file is absent or reads back complete and equal to ``reference``."""
    if not path.exists():
        return False
    assert content(path) == reference
    return True


# ---------------------------------------------------------------- the stages' data

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Raw ingest shards, built shards, the manifest and the uninterrupted results of
    the build and merge stages for 40 structures in two shards."""
    root = tmp_path_factory.mktemp("pipeline")
    from nnpflow.io.xsf import write_xsf
    data = root / "data"
    data.mkdir()
    for s in cells(40, seed=1):
        write_xsf(data / f"{s.name}.xsf", [s])
    specs = [SourceSpec(path=str(p), format="xsf").to_dict() for p in sorted(data.iterdir())]
    paths = {}
    for k in range(2):
        out = {"manifest": root / f"m{k}.tsv", "rejected": root / f"r{k}.tsv",
               "structures": root / f"raw{k}.h5"}
        ingest_stage.run(specs, shard=k, n_shards=2, species=SPECIES,
                         min_cutoff=DESCRIPTOR["min_cutoff"],
                         **{key: str(v) for key, v in out.items()})
        paths[k] = out
    manifest_stage.run([str(paths[k]["manifest"]) for k in range(2)],
                       [str(paths[k]["rejected"]) for k in range(2)],
                       manifest=str(root / "manifest.tsv"), summary=str(root / "manifest.json"),
                       rejected=str(root / "rejected.tsv"))
    built = []
    for k in range(2):
        out = root / f"shard{k}.h5"
        build_stage.run(str(paths[k]["structures"]), str(out), DESCRIPTOR, DATABASE_CFG,
                        species=SPECIES)
        built.append(out)
    merge_stage.run([str(p) for p in built], str(root / "database.h5"),
                    str(root / "database.json"), manifest_summary=str(root / "manifest.json"))
    return {"root": root, "specs": specs, "raw": [paths[k]["structures"] for k in range(2)],
            "built": built, "shard_ref": content(built[0]),
            "merged_ref": content(root / "database.h5"),
            "summary_ref": json.loads((root / "database.json").read_text())}


BUILD_POINTS = [("flush", "before", 1), ("flush", "after", 2), ("fsync", "before", 1),
                ("replace:out.h5", "before", 1), ("replace:out.h5", "after", 1)]


@pytest.mark.parametrize("point", BUILD_POINTS, ids=lambda p: "-".join(map(str, p)))
def test_sigkill_of_the_build_stage(pipeline, tmp_path, point):
    out = tmp_path / "out.h5"
    code = run_killed(point, build_stage.run, str(pipeline["raw"][0]), str(out), DESCRIPTOR,
                      DATABASE_CFG, SPECIES)
    assert code == -signal.SIGKILL
    present = assert_absent_or_complete(out, pipeline["shard_ref"])
    assert present == (point == ("replace:out.h5", "after", 1))
    build_stage.run(str(pipeline["raw"][0]), str(out), DESCRIPTOR, DATABASE_CFG, SPECIES)
    assert content(out) == pipeline["shard_ref"]


MERGE_POINTS = [("link", "before", 1), ("link", "after", 2), ("fsync", "before", 1),
                ("replace:db.h5", "before", 1), ("replace:db.h5", "after", 1),
                ("replace:db.json", "before", 1)]


@pytest.mark.parametrize("point", MERGE_POINTS, ids=lambda p: "-".join(map(str, p)))
def test_sigkill_of_the_merge_stage(pipeline, tmp_path, point):
    db, summary = tmp_path / "db.h5", tmp_path / "db.json"
    args = ([str(p) for p in pipeline["built"]], str(db), str(summary),
            str(pipeline["root"] / "manifest.json"))
    assert run_killed(point, merge_stage.run, *args) == -signal.SIGKILL
    present = assert_absent_or_complete(db, pipeline["merged_ref"])
    assert present == (point[0] == "replace:db.json" or point == ("replace:db.h5", "after", 1))
    assert not summary.exists()  # the summary comes last
    merge_stage.run(*args)
    assert content(db) == pipeline["merged_ref"]
    got = json.loads(summary.read_text())
    ref = pipeline["summary_ref"]
    for key in ("fingerprint", "structures_fingerprint", "n_structures", "statistics"):
        assert got[key] == ref[key], key
    assert got["path"] == str(db)


INGEST_POINTS = [("flush", "before", 1), ("fsync", "before", 1),
                 ("replace:raw.h5", "after", 1), ("replace:m.tsv", "before", 1)]


@pytest.mark.parametrize("point", INGEST_POINTS, ids=lambda p: "-".join(map(str, p)))
def test_sigkill_of_the_ingest_stage(pipeline, tmp_path, point):
    """The ingest job writes raw structures, then its manifest, then the rejected
    list; a kill leaves each either absent or complete."""
    out = {"manifest": str(tmp_path / "m.tsv"), "rejected": str(tmp_path / "r.tsv"),
           "structures": str(tmp_path / "raw.h5")}
    kwargs = dict(shard=0, n_shards=2, species=SPECIES, min_cutoff=0.55, **out)

    def ingest(specs):
        ingest_stage.run(specs, **kwargs)
    assert run_killed(point, ingest, pipeline["specs"]) == -signal.SIGKILL
    raw_ref = content(pipeline["raw"][0])
    assert assert_absent_or_complete(tmp_path / "raw.h5", raw_ref) == (point[0] != "flush"
                                                                       and point[0] != "fsync")
    assert not (tmp_path / "m.tsv").exists() and not (tmp_path / "r.tsv").exists()
    ingest(pipeline["specs"])
    assert content(tmp_path / "raw.h5") == raw_ref
    assert (tmp_path / "m.tsv").read_text() == Path(pipeline["root"] / "m0.tsv").read_text()


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8])
def test_sigkill_of_the_build_stage_after_a_delay(pipeline, tmp_path, delay):
    out = tmp_path / "out.h5"
    run_and_kill_after(delay, build_stage.run, str(pipeline["raw"][0]), str(out), DESCRIPTOR,
                       DATABASE_CFG, SPECIES)
    assert_absent_or_complete(out, pipeline["shard_ref"])
    build_stage.run(str(pipeline["raw"][0]), str(out), DESCRIPTOR, DATABASE_CFG, SPECIES)
    assert content(out) == pipeline["shard_ref"]


# ---------------------------------------------------------------- the Python API

def _descriptor() -> ChebyshevDescriptor:
    return ChebyshevDescriptor(species=SPECIES, **DESCRIPTOR)


def _dataset_build(path: str, records) -> None:
    ds = HDF5StructureDataset(_descriptor(), path, sources=records, mode="build")
    ds.build_database(build_workers=2, persist_features=True, persist_force_derivatives=True)
    ds.close()


@pytest.fixture(scope="module")
def records():
    return cells(48, seed=2, prefix="r")


@pytest.fixture(scope="module")
def dataset_ref(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("ref") / "db.h5"
    _dataset_build(str(path), records)
    return content(path)


#: kill points of the main process, which merges the workers' shards
DATASET_POINTS = [
    ("move:shard_0.h5", "after", 1, "main"),     # shard 0 became the output's temp file
    ("copy", "before", 1, "main"),              # shard 1's part copied into it
    ("copy", "after", 1, "main"),
    ("fsync", "before", 1, "main"),
    ("replace:db.h5", "before", 1, "main"),
    ("replace:db.h5", "after", 1, "main"),
]


@pytest.mark.parametrize("point", DATASET_POINTS, ids=lambda p: "-".join(map(str, p)))
def test_sigkill_of_a_dataset_build_with_two_workers(tmp_path, records, dataset_ref, point):
    path = tmp_path / "db.h5"
    assert run_killed(point, _dataset_build, str(path), records) == -signal.SIGKILL
    present = assert_absent_or_complete(path, dataset_ref)
    assert present == (point[:2] == ("replace:db.h5", "after"))
    _dataset_build(str(path), records)  # the rerun (also clears the killed run's shards)
    assert content(path) == dataset_ref
    assert [p.name for p in tmp_path.iterdir() if ".shards-" in p.name] == []


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_killed_build_worker_fails_the_build_instead_of_hanging(tmp_path, records,
                                                                   dataset_ref, when):
    """SIGKILL of one worker (the out-of-memory killer's way): the build raises an
    error naming the shard within seconds, writes nothing, stops the other worker;
    a rerun succeeds."""
    path = tmp_path / "db.h5"
    arm_point = ("flush", when, 1, "worker")  # a worker's first block: its whole shard

    def build_and_report(queue):
        arm(*arm_point)
        try:
            _dataset_build(str(path), records)
            queue.put("finished")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            queue.put(f"{type(exc).__name__}: {exc}")

    queue = FORK.Queue()
    start = time.perf_counter()
    proc = FORK.Process(target=build_and_report, args=(queue,))
    proc.start()
    try:
        message = queue.get(timeout=120)
    finally:
        proc.join(30)
    assert time.perf_counter() - start < 120
    assert proc.exitcode == 0
    assert message.startswith("RuntimeError: the worker process building shard "), message
    assert "killed by SIGKILL" in message
    assert not path.exists()
    _dataset_build(str(path), records)
    assert content(path) == dataset_ref


# ---------------------------------------------------------------- atomic outputs

def _record_writes(report: str, root: str) -> None:
    """Run every stage on a tiny example with an audit hook that records each file
    opened for writing (Python ``open``/``os.open`` and ``h5py.File``) and each
    rename; write the record and the outputs to ``report`` (JSON)."""
    opened: list[str] = []
    renames: list[tuple[str, str]] = []

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return
            if mode is not None:
                writes = any(c in str(mode) for c in "wax+")
            else:
                writes = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
                                       | os.O_APPEND))
            if writes:
                opened.append(os.path.abspath(os.fsdecode(path)))
        elif event == "os.rename":
            renames.append((os.path.abspath(os.fsdecode(args[0])),
                            os.path.abspath(os.fsdecode(args[1]))))
    sys.addaudithook(hook)
    original = h5py.File.__init__

    def h5_init(self, name, mode="r", *args, **kwargs):
        if mode != "r" and isinstance(name, (str, os.PathLike)):
            opened.append(os.path.abspath(os.fsdecode(name)))
        original(self, name, mode, *args, **kwargs)
    h5py.File.__init__ = h5_init

    os.chdir(root)
    outputs: dict[str, list[str]] = {}

    def stage(name, func, **kwargs):
        files = [v for k, v in kwargs.items() if k in OUTPUT_NAMES.get(name, ())]
        func(**kwargs)
        outputs[name] = [os.path.abspath(f) for f in files]

    config = {"enabled": True, "n_structures": 6, "seed": 3, "archive_fraction": 0.5}
    stage("example", example_stage.run, out_dir="ex", config=config)
    from nnpflow.example import example_files
    outputs["example"] = [os.path.abspath(os.path.join("ex", f)) for f in example_files(config)]
    from nnpflow.sources import expand_sources
    specs = [s.to_dict() for s in expand_sources(["ex"])]
    for k in range(2):
        stage("ingest", ingest_stage.run, specs=specs, shard=k, n_shards=2,
              manifest=f"manifest/shard_{k}.tsv", rejected=f"manifest/shard_{k}.rejected.tsv",
              structures=f"ingest/shard_{k}.h5", min_cutoff=0.55)
        outputs[f"ingest{k}"] = outputs.pop("ingest")
    stage("manifest", manifest_stage.run,
          shard_manifests=[f"manifest/shard_{k}.tsv" for k in range(2)],
          shard_rejected=[f"manifest/shard_{k}.rejected.tsv" for k in range(2)],
          manifest="manifest/manifest.tsv", summary="manifest/manifest.json",
          rejected="manifest/rejected.tsv")
    for k in range(2):
        stage("build", build_stage.run, structures=f"ingest/shard_{k}.h5",
              database=f"database/shard_{k}.h5", descriptor=DESCRIPTOR,
              database_cfg=DATABASE_CFG, manifest_summary="manifest/manifest.json")
        outputs[f"build{k}"] = outputs.pop("build")
    stage("merge", merge_stage.run, shards=[f"database/shard_{k}.h5" for k in range(2)],
          database="database/database.h5", summary="database/database.json",
          manifest_summary="manifest/manifest.json")
    stage("split", split_stage.run, manifest_summary="manifest/manifest.json",
          manifest="manifest/manifest.tsv", split="split/split.json", validation=1, test=1,
          seed=0)
    with open(report + ".part", "w") as fh:  # the test's own file
        json.dump({"opened": opened, "renames": renames, "outputs": outputs}, fh)
    os.replace(report + ".part", report)


#: each stage's output arguments (what its Snakemake rule declares as output)
OUTPUT_NAMES = {"ingest": ("manifest", "rejected", "structures"),
                "manifest": ("manifest", "summary", "rejected"),
                "build": ("database",), "merge": ("database", "summary"),
                "split": ("split",)}


def test_every_stage_writes_its_outputs_through_a_temporary_file_next_to_them(tmp_path):
    report = str(tmp_path / "report.json")
    root = tmp_path / "run"
    root.mkdir()
    assert run_killed(None, _record_writes, report, str(root), timeout=300) == 0
    rec = json.loads(Path(report).read_text())
    opened = set(rec["opened"])
    renamed_onto = {dst: src for src, dst in rec["renames"]}
    outputs = [f for files in rec["outputs"].values() for f in files]
    assert len(outputs) >= 17 and set(rec["outputs"]) == {
        "example", "ingest0", "ingest1", "manifest", "build0", "build1", "merge", "split"}
    for out in outputs:
        assert Path(out).is_file(), out
        assert out not in opened, f"{out} was opened for writing at its final path"
        src = renamed_onto.get(out)
        assert src is not None, f"{out} was not renamed into place"
        assert Path(src).parent == Path(out).parent, (src, out)
        assert Path(src).name.startswith(f".{Path(out).name}.tmp-"), (src, out)
    # nothing left behind: no temporary files, no shard folders
    strays = [str(p) for p in root.rglob(".*") if p.name != ".snakemake"]
    assert strays == []
