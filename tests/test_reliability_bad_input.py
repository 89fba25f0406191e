"""Issue 8, bad input: every class of a generated corpus through the database build
(``HDF5StructureDataset.build_database``, ``build_sharded`` with worker processes),
both command lines (``nnpflow db build``, ``nnpflow ingest``), the workflow's ingest
stage and real Snakemake runs.

With ``on_error="raise"`` each bad file gives one error naming the file (archive
member, line) and what is wrong, and nothing is written: no database, no manifest,
no temporary file left next to them.  With ``on_error="skip"`` the build succeeds
from the good sources and the rejected list names every bad one with its reason.

The corpus is generated here (no committed binaries); its good base file is checked
to be good, so every failure below comes from the one defect each case introduces.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from nnpflow import InputError, Structure
from nnpflow.cli import main as cli_main
from nnpflow.database import DatabaseReader
from nnpflow.database.build import build_sharded
from nnpflow.datasets import HDF5StructureDataset
from nnpflow.descriptors import ChebyshevDescriptor
from nnpflow.io.manifest import read_manifest, read_rejected
from nnpflow.sharding import shard_of
from nnpflow.sources import RecordSourceCollection, collection_for, expand_sources
from nnpflow.stages import ingest as ingest_stage

REPO = Path(__file__).resolve().parents[1]

#: the base file every bad case is made from: two Cu atoms, 3.6 Å cubic cell, forces
GOOD = """\
# total energy = -7.25 eV
CRYSTAL
PRIMVEC
3.6 0.0 0.0
0.0 3.6 0.0
0.0 0.0 3.6
PRIMCOORD
2 1
Cu 0.0 0.0 0.0 0.1 0.0 0.0
Cu 1.8 1.8 0.0 -0.1 0.0 0.0
"""

SPECIES = ["Cu", "Au"]
MIN_CUTOFF = 0.5  # Å; the overlap case puts two atoms 0.2 Å apart


def descriptor() -> ChebyshevDescriptor:
    return ChebyshevDescriptor(species=SPECIES, rad_order=2, rad_cutoff=3.0, ang_order=1,
                               ang_cutoff=2.5, min_cutoff=MIN_CUTOFF)


def good_xsf(energy: float) -> str:
    return GOOD.replace("-7.25", repr(float(energy)))


def tar_bytes(members: list[tuple[str, bytes]], compression: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def corrupt_archive(compression: str) -> bytes:
    """A compressed archive of 30 good members with 32 bytes flipped in the middle."""
    members = [(f"m{k}.xsf", good_xsf(-k - 0.5).encode()) for k in range(30)]
    data = bytearray(tar_bytes(members, compression))
    for k in range(len(data) // 2, len(data) // 2 + 32):
        data[k] ^= 0xA5
    return bytes(data)


@dataclass(frozen=True)
class Case:
    """One bad file: its bytes, the error it must give (regex on the reason), the
    line and archive member the error names (None: none)."""

    content: bytes
    message: str
    line: int | None = None
    member: str | None = None


def _drop_lines(text: str, first: int, last: int) -> str:
    return "\n".join(x for k, x in enumerate(text.splitlines()) if not first <= k <= last) + "\n"


#: file name -> Case.  Names decide the reader (by suffix).
CORPUS: dict[str, Case] = {
    "truncated.xsf": Case(GOOD[:GOOD.index("Cu 1.8")].encode(),
                          r"file ends after 1 of the 2 atom lines .*truncated file\?", 9),
    "energy_missing.xsf": Case(GOOD.replace("# total energy = -7.25 eV", "# no energy").encode(),
                               r"no total energy", 7),
    "energy_text.xsf": Case(GOOD.replace("-7.25", "n/a").encode(),
                            r"total energy line has non-numeric value 'n/a'", 1),
    "energy_nan.xsf": Case(GOOD.replace("-7.25", "nan").encode(),
                           r"non-finite total energy 'nan'", 1),
    "position_inf.xsf": Case(GOOD.replace("Cu 1.8 1.8", "Cu 1.8 -inf").encode(),
                             r"non-finite position '-inf' \(atom 2\)", 10),
    "force_nan.xsf": Case(GOOD.replace("0.1 0.0 0.0\n", "0.1 nan 0.0\n").encode(),
                          r"non-finite force 'nan' \(atom 1\)", 9),
    "columns.xsf": Case(GOOD.replace("Cu 0.0 0.0 0.0 0.1 0.0 0.0", "Cu 0.0 0.0 0.0 0.1").encode(),
                        r"atom line has 5 columns; expected 4 .* or 7", 9),
    "count_low.xsf": Case(GOOD.replace("\n2 1\n", "\n3 1\n").encode(),
                          r"file ends after 2 of the 3 atom lines", 10),
    "count_high.xsf": Case(GOOD.replace("\n2 1\n", "\n1 1\n").encode(),
                           r"more atom lines than the 1 that PRIMCOORD \(line 7\) declares", 10),
    "primvec_missing.xsf": Case(_drop_lines(GOOD, 2, 5).encode(),
                                r"PRIMCOORD but no PRIMVEC before it", 3),
    "primvec_singular.xsf": Case(GOOD.replace("0.0 0.0 3.6", "3.6 0.0 0.0").encode(),
                                 r"singular PRIMVEC: the lattice vectors are linearly dependent",
                                 3),
    "element.xsf": Case(GOOD.replace("Cu 1.8", "Qq 1.8").encode(),
                        r"unknown element symbol 'Qq'", 10),
    "empty.xsf": Case(b"", r"empty file"),
    "garbage.xsf": Case(b"\x7fELF\x02\x01\x01\x00"  # an executable's header, then noise
                        + bytes(np.random.default_rng(5).integers(0, 256, 3000, dtype=np.uint8)),
                        r"binary data \(NUL byte\)|not UTF-8 text", 1),
    "corrupt.tar.gz": Case(corrupt_archive("gz"),
                           r"corrupt or truncated archive|not a readable tar archive"),
    "corrupt.tar.bz2": Case(corrupt_archive("bz2"),
                            r"corrupt or truncated archive|not a readable tar archive"),
    "corrupt.tar.xz": Case(corrupt_archive("xz"),
                           r"corrupt or truncated archive|not a readable tar archive"),
    "no_members.tar.gz": Case(tar_bytes([("README", b"x"), ("a.cif", b"y")], "gz"),
                              r"archive has no members with suffix \.xsf"),
    "bad_member.tar.bz2": Case(
        tar_bytes([("ok.xsf", GOOD.encode()),
                   ("sub/bad.xsf", GOOD.replace("Cu 1.8 1.8", "Cu 1.8 1,8").encode())], "bz2"),
        r"non-numeric coordinate or force '1,8'", 10, "sub/bad.xsf"),
    "platinum.xsf": Case(GOOD.replace("Cu 1.8", "Pt 1.8").encode(),
                         r"species Pt not in the (descriptor's species|species list)"),
    "overlap.xsf": Case(GOOD.replace("Cu 1.8 1.8 0.0", "Cu 0.2 0.0 0.0").encode(),
                        r"overlapping atoms: atoms 1 \(Cu\) and 2 \(Cu\) are 0\.2 Å apart, "
                        r"at or below min_cutoff 0\.5 Å"),
}

#: good sources beside the bad ones: 3 plain files and an archive with 2 members
GOOD_FILES = {f"good{k}.xsf": good_xsf(-7.0 - k).encode() for k in range(3)}
GOOD_FILES["good.tar.gz"] = tar_bytes([("g.xsf", good_xsf(-8.0).encode()),
                                       ("h.xsf", good_xsf(-8.5).encode())], "gz")
GOOD_LABELS = ["good0.xsf", "good1.xsf", "good2.xsf", "good.tar.gz:g.xsf", "good.tar.gz:h.xsf"]


def write_files(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out.append(folder / name)
    return out


def location(label: str, case: Case) -> str:
    """What ``str(InputError)`` starts with: ``path[:member][, line N]``."""
    loc = label + (f":{case.member}" if case.member else "")
    return loc + (f", line {case.line}" if case.line is not None else "")


def assert_names(text: str, label: str, case: Case) -> None:
    loc = location(label, case)
    assert text.startswith(loc + ":") or text.startswith(loc + " "), (loc, text)
    assert re.search(case.message, text), (case.message, text)


def leftovers(folder: Path, *names: str) -> list[str]:
    """Outputs or temporary files of ``names`` in ``folder`` (``.name.tmp-*``,
    ``.name.shards-*``)."""
    found = []
    for p in folder.iterdir():
        for name in names:
            if p.name == name or p.name.startswith(f".{name}."):
                found.append(p.name)
    return sorted(found)


def test_the_base_file_and_good_sources_are_good(tmp_path):
    """Guards the corpus: the good sources build cleanly, every check included."""
    paths = write_files(tmp_path, GOOD_FILES)
    ds = HDF5StructureDataset(descriptor(), tmp_path / "db.h5", sources=paths, mode="build")
    ds.build_database()
    assert sorted(s["name"] for s in ds) == sorted(str(tmp_path / x) for x in GOOD_LABELS)
    ds.close()


# ----------------------------------------------------------------- Python API

@pytest.mark.parametrize("name", sorted(CORPUS))
def test_dataset_build_raises_naming_the_file_and_writes_nothing(tmp_path, name):
    case = CORPUS[name]
    data = tmp_path / "data"
    good = write_files(data, GOOD_FILES)
    (bad,) = write_files(data, {name: case.content})
    sources = [good[0], bad, *good[1:]]  # the bad file between good ones
    ds = HDF5StructureDataset(descriptor(), tmp_path / "db.h5", sources=sources, mode="build")
    with pytest.raises(InputError) as info:
        ds.build_database(persist_features=True, persist_force_derivatives=True)
    assert_names(str(info.value), str(bad), case)
    assert info.value.line == case.line
    assert leftovers(tmp_path, "db.h5") == []
    assert ds.needs_build


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_parallel_build_raises_from_a_worker_and_writes_nothing(tmp_path, name):
    """Two worker processes, three shards: the error of the worker that meets the bad
    file reaches the caller intact (type, file, member, line), and the shard folder
    is gone."""
    case = CORPUS[name]
    data = tmp_path / "data"
    good = write_files(data, GOOD_FILES)
    (bad,) = write_files(data, {name: case.content})
    with pytest.raises(InputError) as info:
        build_sharded([*good, bad], tmp_path / "db.h5", descriptor(), n_workers=2, n_shards=3,
                      check_overlaps=True)
    assert_names(str(info.value), str(bad), case)
    assert (info.value.source, info.value.member, info.value.line) == (
        str(bad), case.member, case.line)
    assert leftovers(tmp_path, "db.h5") == []


def test_two_sources_with_the_same_label(tmp_path):
    a = Structure(positions=[[0, 0, 0], [1.8, 1.8, 0]], species=["Cu", "Cu"],
                  cell=np.eye(3) * 3.6, energy=-7.0, name="same")
    b = a.copy(energy=-7.5)
    with pytest.raises(InputError, match=r"^same: two sources with the same label"):
        HDF5StructureDataset(descriptor(), tmp_path / "db.h5", sources=[a, b],
                             mode="build").build_database()
    (path,) = write_files(tmp_path / "d", {"a.xsf": GOOD.encode()})
    with pytest.raises(InputError, match=re.escape(f"{path}: two sources with the same label")):
        build_sharded([path, path], tmp_path / "db.h5", descriptor())
    assert leftovers(tmp_path, "db.h5") == []
    # under skip the second one is rejected, the first kept
    result = build_sharded(RecordSourceCollection([a, b]), tmp_path / "db.h5", descriptor(),
                           on_error="skip")
    assert result.n_structures == 1 and [r.label for r in result.rejected] == ["same"]


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_builds_from_the_good_sources_and_lists_every_bad_one(tmp_path, workers):
    data = tmp_path / "data"
    write_files(data, GOOD_FILES)
    write_files(data, {name: case.content for name, case in CORPUS.items()})
    specs = expand_sources([str(data)])
    result = build_sharded(collection_for(specs), tmp_path / "db.h5", descriptor(),
                           n_workers=workers, n_shards=3, on_error="skip", check_overlaps=True)
    with DatabaseReader(tmp_path / "db.h5") as db:
        names = db.names()
    # members read before the damage of a corrupt archive are good data and kept
    kept = sorted(n for n in names if not re.search(r"/corrupt\.tar\.\w+:", n))
    assert kept == sorted([f"{data}/{x}" for x in GOOD_LABELS]
                          + [f"{data}/bad_member.tar.bz2:ok.xsf"])
    reasons = {}
    for r in result.rejected:
        reasons.setdefault(r.label.split(":")[0] if ".tar." in r.label else r.label,
                           []).append(r.reason)
    for name, case in CORPUS.items():
        label = f"{data}/{name}"
        assert label in reasons, f"{name} not rejected"
        assert any(re.search(case.message, x) and x.startswith(location(label, case))
                   for x in reasons[label]), reasons[label]
    assert set(reasons) == {f"{data}/{name}" for name in CORPUS}


@pytest.mark.parametrize("seed", range(8))
def test_overlap_check_agrees_with_a_brute_force_image_search(seed):
    """The overlap check's minimum-image path (cutoffs below half the lattice-plane
    spacing: the build's case) against all pairs and images, in skewed cells with
    atoms outside the home cell, periodic in 3 or 2 directions."""
    import itertools
    from nnpflow.structure_checks import closest_pair

    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(4.0, 6.0, 3)) + np.triu(rng.uniform(-1.5, 1.5, (3, 3)), 1)
    n = int(rng.integers(2, 30))
    frac = rng.uniform(-0.5, 1.5, (n, 3))
    pbc = [True, True, seed % 2 == 0]
    s = Structure(positions=frac @ cell, species=["Cu"] * n, cell=cell, pbc=pbc)
    shifts = np.array([t for t in itertools.product(*[range(-3, 4) if p else [0] for p in pbc])],
                      dtype=float) @ cell
    diff = s.positions[None, :, None, :] + shifts[None, None] - s.positions[:, None, None, :]
    d = np.linalg.norm(diff, axis=-1)                       # (N, N, images)
    zero = int(np.flatnonzero(~shifts.any(1))[0])
    d[np.arange(n), np.arange(n), zero] = np.inf
    expected = float(d.min())
    heights = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
    assert expected < 0.5 * heights.min()  # the case under test
    got = closest_pair(s, expected + 1e-9)
    assert got is not None and got[0] == pytest.approx(expected, abs=1e-12)
    i, j = got[1], got[2]
    assert d[i, j].min() == pytest.approx(expected, abs=1e-12)
    assert closest_pair(s, expected - 1e-9) is None


# ----------------------------------------------------------------- command lines

def _cli_args(command: str, paths: list[str], out: str) -> list[str]:
    if command == "db":
        return ["db", "build", *paths, "-o", out, "--species", *SPECIES, "--rad-order", "2",
                "--rad-cutoff", "3.0", "--ang-order", "1", "--ang-cutoff", "2.5",
                "--min-cutoff", str(MIN_CUTOFF)]
    return ["ingest", *paths, "-o", out, "--species", ",".join(SPECIES),
            "--min-cutoff", str(MIN_CUTOFF)]


@pytest.mark.parametrize("command", ["db", "ingest"])
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, command,
                                                     name):
    case = CORPUS[name]
    monkeypatch.chdir(tmp_path)
    write_files(Path("data"), GOOD_FILES)
    write_files(Path("data"), {name: case.content})
    out = "out/db.h5" if command == "db" else "out/manifest.tsv"
    status = cli_main(_cli_args(command, ["data/good0.xsf", f"data/{name}", "data/good.tar.gz"],
                                out))
    captured = capsys.readouterr()
    err = captured.err
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1, err
    prefix = f"nnpflow {command}: error: "
    assert err.startswith(prefix), err
    assert_names(err[len(prefix):].strip(), f"data/{name}", case)
    assert captured.out == ""
    assert not Path("out").exists() or os.listdir("out") == []


@pytest.mark.parametrize("command", ["db", "ingest"])
def test_cli_refuses_the_same_source_twice(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    write_files(Path("data"), {"a.xsf": GOOD.encode()})
    status = cli_main(_cli_args(command, ["data/a.xsf", "data", "./data/a.xsf"], "out/x"))
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert re.search(r"file data/a\.xsf is listed twice", err), err
    assert not Path("out").exists()


def test_cli_db_build_skip_reports_every_bad_source(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_files(Path("data"), GOOD_FILES)
    write_files(Path("data"), {name: case.content for name, case in CORPUS.items()})
    status = cli_main(_cli_args("db", ["data"], "db.h5") + ["--on-error", "skip"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    rejected = {r["label"].split(":")[0] for r in summary["rejected"]}
    assert rejected == {f"data/{name}" for name in CORPUS}
    with DatabaseReader("db.h5") as db:
        assert {f"data/{x}" for x in GOOD_LABELS} <= set(db.names())


# ----------------------------------------------------------------- the ingest stage

@pytest.mark.parametrize("name", sorted(CORPUS))
def test_ingest_stage_raises_and_writes_none_of_its_outputs(tmp_path, monkeypatch, name):
    """What the workflow's ingest job runs, with ``on_error: raise``."""
    case = CORPUS[name]
    monkeypatch.chdir(tmp_path)
    write_files(Path("data"), GOOD_FILES)
    write_files(Path("data"), {name: case.content})
    specs = [s.to_dict() for s in expand_sources(["data"])]
    out = {"manifest": "r/manifest/shard_0.tsv", "rejected": "r/manifest/shard_0.rejected.tsv",
           "structures": "r/ingest/shard_0.h5"}
    with pytest.raises(InputError) as info:
        ingest_stage.run(specs, shard=0, n_shards=1, species=SPECIES, min_cutoff=MIN_CUTOFF,
                         on_error="raise", **out)
    assert_names(str(info.value), f"data/{name}", case)
    for path in out.values():
        folder = Path(path).parent
        assert not folder.exists() or leftovers(folder, Path(path).name) == [], path


# ----------------------------------------------------------------- Snakemake

#: the targets the tests ask for (not `all`, so later stages never join these runs)
TARGETS = ("results/manifest/manifest.tsv", "results/manifest/rejected.tsv",
           "results/database/database.h5", "results/split/split.json")


@pytest.fixture
def workflow_copy(copy_workflow):
    """``workflow_copy(root, on_error, files, **changes) -> root``: a copy of the
    workflow in ``root`` reading the source folder ``data/`` (the example off),
    2 shards, a small descriptor, the corpus species and min_cutoff."""

    def make(root: Path, on_error: str, files: dict[str, bytes], **changes) -> Path:
        cfg = copy_workflow(root)
        cfg["example"]["enabled"] = False
        cfg["sources"] = [{"path": "data"}]
        cfg["species"] = SPECIES
        cfg["on_error"] = on_error
        cfg["descriptor"] = {"rad_order": 2, "rad_cutoff": 3.0, "ang_order": 1, "ang_cutoff": 2.5,
                             "min_cutoff": MIN_CUTOFF}
        cfg["database"]["shards"] = 2
        cfg["split"] = {"validation": 1, "test": 1, "seed": 1}
        cfg.update(changes)
        (root / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        write_files(root / "data", files)
        return root
    return make


def run_snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args],
                          cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.workflow
@pytest.mark.slow
def test_workflow_skip_completes_and_lists_every_bad_file(tmp_path, workflow_copy):
    files = {**GOOD_FILES, **{name: case.content for name, case in CORPUS.items()}}
    root = workflow_copy(tmp_path, "skip", files)
    proc = run_snakemake(root, *TARGETS)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = root / "results"
    rows = read_rejected(results / "manifest" / "rejected.tsv")
    by_file: dict[str, list[str]] = {}
    for row in rows:
        by_file.setdefault(row["label"].split(":")[0] if ".tar." in row["label"]
                           else row["label"], []).append(row["reason"])
    assert set(by_file) == {f"data/{name}" for name in CORPUS}
    for name, case in CORPUS.items():
        label = f"data/{name}"
        assert any(re.search(case.message, r) and r.startswith(location(label, case))
                   for r in by_file[label]), (name, by_file[label])
    labels = [row["label"] for row in read_manifest(results / "manifest" / "manifest.tsv")]
    kept = sorted(x for x in labels if not re.search(r"^data/corrupt\.tar\.\w+:", x))
    assert kept == sorted([f"data/{x}" for x in GOOD_LABELS] + ["data/bad_member.tar.bz2:ok.xsf"])
    with DatabaseReader(results / "database" / "database.h5") as db:
        assert db.names() == labels and db.has_features
    assert json.loads((results / "split" / "split.json").read_text())["structures_fingerprint"] \
        == json.loads((results / "manifest" / "manifest.json").read_text())[
            "structures_fingerprint"]


@pytest.mark.workflow
@pytest.mark.slow
def test_workflow_raise_fails_the_ingest_job_names_the_file_and_writes_no_database(tmp_path, workflow_copy):
    name = "bad_member.tar.bz2"  # an archive feeds both shards; one owns the bad member
    case = CORPUS[name]
    other = "energy_nan.xsf"     # a plain file belongs to one shard
    files = {**GOOD_FILES, name: case.content, other: CORPUS[other].content}
    root = workflow_copy(tmp_path, "raise", files)
    proc = run_snakemake(root, "--keep-going", *TARGETS)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    results = root / "results"
    logs = {p.name: p.read_text() for p in (results / "logs" / "ingest").glob("*.log")}
    member_shard = shard_of(f"data/{name}:{case.member}", 2)
    file_shard = shard_of(f"data/{other}", 2)
    assert member_shard != file_shard  # the corpus puts one bad source in each shard
    for shard, bad, bad_case in ((member_shard, name, case), (file_shard, other, CORPUS[other])):
        log = logs[f"shard_{shard}.log"]
        line = next(x for x in log.splitlines() if "rule ingest failed:" in x)
        assert_names(line.split("rule ingest failed: ", 1)[1], f"data/{bad}", bad_case)
        assert not (results / "ingest" / f"shard_{shard}.h5").exists()
        assert not (results / "manifest" / f"shard_{shard}.tsv").exists()
    assert "Error in rule ingest" in out
    assert not (results / "database").exists() or not any(
        p.name.startswith(("database", ".database")) for p in (results / "database").iterdir())
    assert not (results / "manifest" / "manifest.tsv").exists()
    assert not (results / "split").exists()


@pytest.mark.workflow
def test_workflow_refuses_a_source_listed_twice(tmp_path, workflow_copy):
    root = workflow_copy(tmp_path, "skip", GOOD_FILES,
                         sources=[{"path": "data"}, {"path": "data/good1.xsf"}])
    proc = run_snakemake(root, "--dry-run", *TARGETS)
    assert proc.returncode != 0
    assert "file data/good1.xsf is listed twice" in proc.stdout + proc.stderr
