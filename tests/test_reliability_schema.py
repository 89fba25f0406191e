"""Issue 8, safe loading: a database or split file that is not what this nnpflow
reads -- another file, a damaged one, an unknown or newer schema -- gives one clear
``SchemaError`` naming the file, through every reader (``DatabaseReader``,
``HDF5StructureDataset`` in every mode, ``nnpflow db info``/``db merge``, the build
and merge stages, ``load_split``), and is never overwritten.  (Model files and
checkpoints are the trainer's: ``tests/test_training_infra.py``.)"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from nnpflow import Structure
from nnpflow.cli import main as cli_main
from nnpflow.database import DatabaseReader, database_info, merge_databases, write_database
from nnpflow.datasets import HDF5StructureDataset
from nnpflow.descriptors import ChebyshevDescriptor
from nnpflow.errors import SchemaError
from nnpflow.splitting import load_split, make_split, write_split
from nnpflow.stages import build as build_stage
from nnpflow.stages import merge as merge_stage


def cells(n: int) -> list[Structure]:
    rng = np.random.default_rng(0)
    base = np.array([[0, 0, 0], [1.8, 1.8, 0], [1.8, 0, 1.8], [0, 1.8, 1.8]])
    return [Structure(positions=base + rng.normal(scale=0.05, size=(4, 3)),
                      species=["Cu", "Au", "Cu", "Au"], cell=np.eye(3) * 3.6,
                      energy=-12.0 + 0.01 * i, forces=rng.normal(size=(4, 3)), name=f"c{i}")
            for i in range(n)]


def descriptor() -> ChebyshevDescriptor:
    return ChebyshevDescriptor(species=["Cu", "Au"], rad_order=2, rad_cutoff=3.0,
                               ang_order=1, ang_cutoff=2.5)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.h5"
    return write_database(path, cells(40), descriptor=descriptor(), persist_features=True)


def _attrs(**changes):
    def edit(path: Path) -> None:
        with h5py.File(path, "a") as h5:
            for key, value in changes.items():
                if value is None:
                    del h5.attrs[key]
                else:
                    h5.attrs[key] = value
    return edit


def _bytes(make):
    def edit(path: Path) -> None:
        path.write_bytes(make(path.read_bytes()))
    return edit


def _foreign(path: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as h5:
        h5["energies"] = np.arange(5.0)


#: name -> (how to spoil a copy of a good database, expected message (regex))
BAD_DATABASES = {
    "newer_schema": (_attrs(schema_version=2), r"schema version 2 is newer than the versions "
                                               r"this nnpflow reads \(1\); upgrade nnpflow"),
    "unknown_schema": (_attrs(schema_version=0), r"schema version 0 is not one of the versions"),
    "text_schema": (_attrs(schema_version="one"), r"schema_version attribute 'one' is not an "
                                                  r"integer"),
    "no_schema": (_attrs(schema_version=None), r"without a schema_version attribute"),
    "other_format": (_attrs(format="someone-else"), r"not an nnpflow database \(format "
                                                    r"attribute 'someone-else'"),
    "foreign_hdf5": (_foreign, r"not an nnpflow database \(format attribute None"),
    "incomplete": (_attrs(complete=False), r"database is incomplete"),
    "no_layout": (_attrs(layout=None), r"malformed nnpflow database \(no layout"),
    "bad_json": (_attrs(statistics="{broken"), r"malformed nnpflow database \(JSONDecodeError"),
    "truncated": (_bytes(lambda b: b[:len(b) // 2]), r"not a readable HDF5 database .*truncated"),
    "empty": (_bytes(lambda b: b""), r"not a readable HDF5 database"),
    "text": (_bytes(lambda b: b"# total energy = -1.0 eV\nCRYSTAL\n"),
             r"not a readable HDF5 database"),
    "garbage": (_bytes(lambda b: bytes(np.random.default_rng(1).integers(0, 256, len(b),
                                                                         dtype=np.uint8))),
                r"not a readable HDF5 database"),
}


def spoiled(good: Path, folder: Path, name: str) -> Path:
    path = folder / f"{name}.h5"
    shutil.copy(good, path)
    BAD_DATABASES[name][0](path)
    return path


@pytest.mark.parametrize("name", sorted(BAD_DATABASES))
def test_every_reader_refuses_a_bad_database_naming_it(good, tmp_path, name):
    path = spoiled(good, tmp_path, name)
    message = BAD_DATABASES[name][1]
    before = path.read_bytes()
    attempts = {
        "DatabaseReader": lambda: DatabaseReader(path),
        "database_info": lambda: database_info(path),
        "load": lambda: HDF5StructureDataset(None, path, mode="load"),
        "load with descriptor": lambda: HDF5StructureDataset(descriptor(), path, mode="load"),
        "auto without sources": lambda: HDF5StructureDataset(descriptor(), path, mode="auto"),
        "merge": lambda: merge_databases([good, path], tmp_path / "merged.h5"),
        "build stage": lambda: build_stage.run(str(path), str(tmp_path / "shard.h5"),
                                               {"rad_order": 2, "rad_cutoff": 3.0,
                                                "ang_order": 1, "ang_cutoff": 2.5},
                                               {}, species=["Cu", "Au"]),
        "merge stage": lambda: merge_stage.run([str(good), str(path)],
                                               str(tmp_path / "merged.h5"),
                                               str(tmp_path / "merged.json")),
    }
    for what, attempt in attempts.items():
        if what == "auto without sources" and name == "incomplete":
            continue  # an unfinished database is stale in auto mode: see below
        with pytest.raises(SchemaError) as info:
            attempt()
        text = str(info.value)
        assert str(path) in text, (what, text)
        assert re.search(message, text), (what, text)
    assert path.read_bytes() == before
    assert not (tmp_path / "merged.h5").exists() and not (tmp_path / "shard.h5").exists()


@pytest.mark.parametrize("name", sorted(set(BAD_DATABASES) - {"incomplete"}))
def test_auto_mode_never_overwrites_a_file_it_cannot_read(good, tmp_path, name):
    """A user's own HDF5 file, a damaged database or one from a newer nnpflow given
    as ``database_file`` in auto mode with sources: refused, the file untouched."""
    path = spoiled(good, tmp_path, name)
    before = path.read_bytes()
    with pytest.raises(SchemaError, match=r"mode='auto' does not overwrite it") as info:
        HDF5StructureDataset(descriptor(), path, sources=cells(5), mode="auto")
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_auto_mode_rebuilds_an_unfinished_database(good, tmp_path):
    path = spoiled(good, tmp_path, "incomplete")
    ds = HDF5StructureDataset(descriptor(), path, sources=cells(5), mode="auto")
    assert ds.needs_build
    ds.build_database()
    assert len(ds) == 5
    ds.close()
    with DatabaseReader(path) as r:
        assert len(r) == 5


@pytest.mark.parametrize("name", ["newer_schema", "truncated", "foreign_hdf5"])
def test_cli_db_info_and_merge_exit_2_with_one_line(good, tmp_path, capsys, name):
    path = spoiled(good, tmp_path, name)
    for argv in (["db", "info", str(path)],
                 ["db", "merge", str(good), str(path), "-o", str(tmp_path / "m.h5")]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"nnpflow db: error: {path}: "), err
        assert re.search(BAD_DATABASES[name][1], err), err
    assert not (tmp_path / "m.h5").exists()


def test_a_directory_is_not_a_database(tmp_path):
    (tmp_path / "db.h5").mkdir()
    with pytest.raises(SchemaError, match=r"db\.h5: not a database file"):
        DatabaseReader(tmp_path / "db.h5")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DatabaseReader(tmp_path / "missing.h5")


# ----------------------------------------------------------------- split files

FP = "ab" * 32


@pytest.fixture
def split_file(tmp_path) -> Path:
    path = tmp_path / "split.json"
    write_split(path, make_split(20, 0.2, 0.2, 3, FP))
    return path


def _spoil_json(change):
    def edit(path: Path) -> None:
        data = json.loads(path.read_text())
        path.write_text(json.dumps(change(data)))
    return edit


BAD_SPLITS = {
    "newer": (_spoil_json(lambda d: {**d, "schema_version": 2}),
              r"split schema version 2 is not supported \(this nnpflow reads version 1\)"),
    "no_version": (_spoil_json(lambda d: {k: v for k, v in d.items() if k != "schema_version"}),
                   r"split schema version None is not supported"),
    "other_format": (_spoil_json(lambda d: {**d, "format": "sklearn"}),
                     r"not an nnpflow split file \(format 'sklearn'\)"),
    "a_list": (_spoil_json(lambda d: [d]), r"not an nnpflow split file"),
    "truncated": (_bytes(lambda b: b[:len(b) // 2]), r"not a JSON split file"),
    "empty": (_bytes(lambda b: b""), r"not a JSON split file"),
    "no_indices": (_spoil_json(lambda d: {k: v for k, v in d.items() if k != "indices"}),
                   r"malformed split file \(KeyError"),
    "text_index": (_spoil_json(lambda d: {**d, "indices": {**d["indices"], "test": ["x"]}}),
                   r"malformed split file"),
    "out_of_range": (_spoil_json(lambda d: {**d, "indices": {**d["indices"], "test": [20]}}),
                     r"indices out of range 0\.\.19"),
}


@pytest.mark.parametrize("name", sorted(BAD_SPLITS))
def test_load_split_refuses_a_bad_split_naming_it(split_file, name):
    spoil, message = BAD_SPLITS[name]
    spoil(split_file)
    with pytest.raises(SchemaError) as info:
        load_split(split_file, FP)
    assert str(info.value).startswith(f"{split_file}: "), str(info.value)
    assert re.search(message, str(info.value)), str(info.value)


def test_load_split_refuses_binary_garbage(split_file):
    split_file.write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    with pytest.raises(SchemaError, match=re.escape(f"{split_file}: ")):
        load_split(split_file, FP)


def test_the_good_files_load(good, split_file):
    """Guards the corpora: the unspoiled database and split load cleanly."""
    with DatabaseReader(good) as r:
        assert len(r) == 40 and r.has_features
    assert load_split(split_file, FP, n_structures=20).counts == {"train": 12, "validation": 4,
                                                                 "test": 4}


# ------------------------------------------------- issue 13: corrupt structure

def _edit(fn):
    def edit(path: Path) -> None:
        with h5py.File(path, "a") as h5:
            fn(h5)
    return edit


def _set(name, index, value):
    def change(h5):
        data = h5[name][:]
        data[index] = value
        del h5[name]
        h5[name] = data
    return change


def _shorten(name, rows):
    def change(h5):
        data = h5[name][:rows]
        del h5[name]
        h5[name] = data
    return change


def _delete(name):
    def change(h5):
        del h5[name]
    return change


P = "parts/0"
#: name -> (spoil, expected message (regex)); each used to raise IndexError,
#: RuntimeError, TypeError or KeyError somewhere inside, or read wrong atoms
CORRUPT_DATABASES = {
    "offset_beyond_atoms": (_edit(_set(f"{P}/structures/atom_offset", 5, 10 ** 6)),
                            r"atom_offset decreases at structure 5 \(1000000 then 24\)"),
    "offsets_not_monotone": (_edit(_set(f"{P}/structures/atom_offset", 3, 1)),
                             r"atom_offset decreases at structure 2 \(8 then 1\)"),
    "last_offset": (_edit(_set(f"{P}/structures/atom_offset", -1, 170)),
                    r"atom_offset ends at 170, but /parts/0/atoms has 160 rows"),
    "atomic_number_200": (_edit(_set(f"{P}/atoms/numbers", 9, 200)),
                          r"atoms/numbers holds atomic number 200 at row 9 \(structure 2\); "
                          r"atomic numbers are 1\.\.118"),
    "atomic_number_0": (_edit(_set(f"{P}/atoms/numbers", 0, 0)),
                        r"atomic number 0 at row 0 \(structure 0\)"),
    "short_features": (_edit(_shorten(f"{P}/features/values", 150)),
                       r"features/values has shape \(150, \d+\), expected \(160, \d+\)"),
    "short_positions": (_edit(_shorten(f"{P}/atoms/positions", 100)),
                        r"atoms/positions has shape \(100, 3\), expected \(160, 3\)"),
    "no_forces": (_edit(_delete(f"{P}/atoms/forces")),
                  r"atoms/forces is missing, but 40 structures of /parts/0 have forces"),
    "no_energy": (_edit(_delete(f"{P}/structures/energy")),
                  r"dataset /parts/0/structures/energy is missing"),
    "n_parts_2": (_attrs(n_parts=2), r"n_parts is 2 but /parts/1 is missing"),
    "n_parts_0": (_attrs(n_parts=0), r"n_parts is 0 but /parts also holds 0"),
    "n_parts_text": (_attrs(n_parts="x"), r"attribute n_parts is 'x', not an integer"),
    "n_structures": (_attrs(n_structures=41), r"the parts hold 40 structures, the "
                                              r"n_structures attribute says 41"),
    "n_atoms": (_attrs(n_atoms=7), r"the parts hold 160 atoms, the n_atoms attribute says 7"),
    "part_count": (_edit(lambda h5: h5[P].attrs.__setitem__("n_structures", 39)),
                   r"atom_offset has 41 entries for 39 structures"),
    "names": (_edit(_set(f"{P}/structures/name_offset", -1, 10 ** 6)),
              r"name_offset ends at 1000000, but /parts/0/structures/name_bytes has \d+ rows"),
    "layout": (_edit(lambda h5: h5[P].attrs.__setitem__("species_layout", "mixed")),
               r"species_layout is 'mixed'"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT_DATABASES))
def test_corrupt_database_structure_is_a_schema_error_naming_file_and_problem(good, tmp_path,
                                                                            name):
    path = tmp_path / f"{name}.h5"
    shutil.copy(good, path)
    spoil, message = CORRUPT_DATABASES[name]
    spoil(path)
    attempts = {
        "DatabaseReader": lambda: DatabaseReader(path),
        "database_info": lambda: database_info(path),
        "load": lambda: HDF5StructureDataset(None, path, mode="load"),
        "merge": lambda: merge_databases([good, path], tmp_path / "merged.h5"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(SchemaError) as info:
            attempt()
        text = str(info.value)
        assert text.startswith(f"{path}: corrupt database: "), (what, text)
        assert re.search(message, text), (what, text)
    assert not (tmp_path / "merged.h5").exists()


def test_cli_db_info_reports_corruption_in_one_line_and_check_reads_the_arrays(good, tmp_path,
                                                                              capsys):
    path = tmp_path / "bad.h5"
    shutil.copy(good, path)
    CORRUPT_DATABASES["no_forces"][0](path)
    assert cli_main(["db", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "atoms/forces is missing" in err, err
    assert cli_main(["db", "info", str(good), "--check"]) == 0
    out = capsys.readouterr().out
    assert "check           ok: read every array (40 structures, 160 atoms" in out
    # what only reading the data finds: a NaN feature, an infinite position
    for dataset, row, what in (("features/values", 7, "feature"),
                               ("atoms/positions", 11, "position")):
        path = tmp_path / f"nan_{what}.h5"
        shutil.copy(good, path)
        _edit(_set(f"{P}/{dataset}", row, np.nan if what == "feature" else np.inf))(path)
        assert cli_main(["db", "info", str(path)]) == 0  # the structure is intact
        capsys.readouterr()
        assert cli_main(["db", "info", str(path), "--check"]) == 2
        err = capsys.readouterr().err
        assert err.strip() == (f"nnpflow db: error: {path}: corrupt database: /parts/0/"
                               f"{dataset} holds a non-finite {what} at row {row}"), err


def test_large_files_check_atomic_numbers_when_a_block_is_read(good, tmp_path, monkeypatch):
    from nnpflow.database import validation
    from nnpflow.database import reader as reader_module

    path = tmp_path / "big.h5"
    shutil.copy(good, path)
    CORRUPT_DATABASES["atomic_number_200"][0](path)
    monkeypatch.setattr(validation, "OPEN_NUMBERS_LIMIT", 100)
    monkeypatch.setattr(reader_module, "OPEN_NUMBERS_LIMIT", 100)
    with DatabaseReader(path) as r:  # 160 atoms > 100: not read on open
        assert r.n_structures == 40
        # structure 0 shares its block (64 structures) with structure 2
        with pytest.raises(SchemaError, match=r"atomic number 200 at row 9 \(structure 2\)"):
            r.structure(0)
    with pytest.raises(SchemaError, match=r"atomic number 200 at row 9 \(structure 2\)"):
        database_info(path, check=True)
