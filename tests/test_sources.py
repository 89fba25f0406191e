"""Source collections, config-entry expansion and SourceSpec."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from nnpflow import ConfigError, InputError, Structure
from nnpflow.io.xsf import format_xsf
from nnpflow.sources import (CombinedSourceCollection, FileListSourceCollection,
                             RecordSourceCollection, Rejection, SourceSpec,
                             TarArchiveXSFSourceCollection, as_source_collection,
                             collection_for, expand_sources)


def cu(energy=-1.0, n=2, name=""):
    return Structure(positions=np.arange(3 * n, dtype=float).reshape(n, 3) * 0.8,
                     species=["Cu"] * n, cell=np.eye(3) * 8, energy=energy,
                     forces=np.zeros((n, 3)), name=name)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tar_of(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tree(tmp_path):
    """A small data folder: XSF files, a hidden file, a README, an archive, a pickle."""
    write(tmp_path / "data" / "b.xsf", format_xsf(cu(-2.0)))
    write(tmp_path / "data" / "a.xsf", format_xsf(cu(-1.0)))
    write(tmp_path / "data" / "sub" / "c.xsf", format_xsf(cu(-3.0)))
    write(tmp_path / "data" / ".hidden.xsf", "garbage")
    write(tmp_path / "data" / "README.md", "not data")
    tar_of(tmp_path / "data" / "arch.tar.gz",
           [("m1.xsf", format_xsf(cu(-4.0)).encode()), ("m2.xsf", format_xsf(cu(-5.0)).encode())])
    with open(tmp_path / "frames.pkl", "wb") as fh:
        pickle.dump([{"R": np.eye(3), "Z": [1, 1, 1], "E": -0.5}], fh)
    write(tmp_path / "refs.csv", "atom_type,atomic_energy\nH,-0.25\n")
    return tmp_path


def test_directory_expansion_is_recursive_sorted_and_skips_hidden(tree):
    specs = expand_sources([{"path": "data"}], base_dir=tree)
    rel = [os.path.relpath(s.path, tree) for s in specs]
    assert rel == ["data/a.xsf", "data/arch.tar.gz", "data/b.xsf", "data/sub/c.xsf"]
    assert [s.format for s in specs] == ["xsf", "tar", "xsf", "xsf"]
    assert [s.is_archive for s in specs] == [False, True, False, False]


def test_relative_base_dir_gives_relative_labels(tree, monkeypatch):
    monkeypatch.chdir(tree)
    specs = expand_sources(["data/*.xsf", {"path": "data/sub/c.xsf"}])
    assert [s.path for s in specs] == ["data/a.xsf", "data/b.xsf", "data/sub/c.xsf"]
    specs = expand_sources([{"path": "./data/**/*.xsf"}])
    assert [s.path for s in specs] == ["data/a.xsf", "data/b.xsf", "data/sub/c.xsf"]


def test_spec_options_and_round_trip(tree):
    (spec,) = expand_sources([{"path": "frames.pkl", "features": {"Ra": "R", "Za": "Z"},
                               "targets": {"E": "E"},
                               "transforms": {"atomic_energy": "refs.csv"}}], base_dir=tree)
    assert spec.format == "pickle"
    assert spec.options["transforms"]["atomic_energy"] == (tree / "refs.csv").as_posix()
    assert spec.input_files() == [spec.path, (tree / "refs.csv").as_posix()]
    again = SourceSpec.from_dict(spec.to_dict())
    assert again == spec
    (s,) = collection_for([spec.to_dict()]).structures()
    assert s.energy == pytest.approx(-0.5 + 0.75)
    (arch,) = expand_sources([{"path": "data/arch.tar.gz", "suffixes": ".xsf"}], base_dir=tree)
    assert arch.options == {"suffixes": [".xsf"]}
    assert [x.energy for x in collection_for([arch]).structures()] == [-4.0, -5.0]


@pytest.mark.parametrize("entry, message", [
    ({"path": "nothing/*.xsf"}, r"source entry 1 \(nothing/\*.xsf\): no files match"),
    ({"path": "missing.xsf"}, r"source entry 1 \(missing.xsf\): 'missing.xsf' does not exist"),
    ({"path": "data", "colour": "red"}, r"unknown key\(s\) colour"),
    ({"format": "xsf"}, r"'path' is missing"),
    ({"path": "data/a.xsf", "features": {"Ra": "R"}}, r"option\(s\) features do not apply"),
    ({"path": "data/a.xsf", "format": "bogus"}, r"unknown format 'bogus'"),
])
def test_bad_entries(tree, entry, message):
    with pytest.raises(ConfigError, match=message):
        expand_sources([entry], base_dir=tree)


def test_empty_directory_entry(tree):
    (tree / "empty").mkdir()
    write(tree / "empty" / "notes.txt", "x")
    with pytest.raises(ConfigError, match=r"directory 'empty' holds no structure files"):
        expand_sources(["empty"], base_dir=tree)


def test_same_file_twice_is_an_error(tree):
    with pytest.raises(ConfigError, match=r"data/a.xsf is listed twice: by source entry 1 .* "
                                          r"and by source entry 2"):
        expand_sources(["data", "./data/../data/a.xsf"], base_dir=tree)


def test_file_list_collection(tree):
    paths = [tree / "data" / "a.xsf", tree / "data" / "arch.tar.gz", tree / "data" / "b.xsf"]
    coll = FileListSourceCollection(paths)
    got = coll.structures()
    assert [s.energy for s in got] == [-1.0, -4.0, -5.0, -2.0]
    assert got[1].name == f"{paths[1].as_posix()}:m1.xsf"
    hashes = coll.content_hashes()
    assert hashes[paths[0].as_posix()] == hashlib.sha256(paths[0].read_bytes()).hexdigest()
    assert [d["kind"] for d in coll.describe()] == ["file", "tar", "file"]
    assert coll.supports_parallel_build
    # select works on unit labels: plain paths and archive members
    keep = {paths[0].as_posix(), f"{paths[1].as_posix()}:m2.xsf"}
    assert [s.energy for s in coll.structures(select=keep.__contains__)] == [-1.0, -5.0]
    with pytest.raises(ConfigError, match=r"option\(s\) features do not apply"):
        FileListSourceCollection(paths, features={"Ra": "R"})


def test_records_and_mixtures(tree):
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    atoms.calc = SinglePointCalculator(atoms, energy=-31.0, forces=np.zeros((2, 3)))
    records = RecordSourceCollection([cu(-7.0, name="mine"), atoms])
    got = records.structures()
    assert [s.name for s in got] == ["mine", "records[1]"]
    assert got[1].energy == -31.0 and got[1].cell is None
    mixed = as_source_collection([tree / "data" / "a.xsf", str(tree / "data" / "b.xsf"),
                                  cu(-8.0, name="r"), records,
                                  TarArchiveXSFSourceCollection(tree / "data" / "arch.tar.gz")])
    assert isinstance(mixed, CombinedSourceCollection)
    assert [s.energy for s in mixed] == [-1.0, -2.0, -8.0, -7.0, -31.0, -4.0, -5.0]
    assert as_source_collection(records) is records
    assert [s.energy for s in as_source_collection(atoms)] == [-31.0]
    with pytest.raises(TypeError, match="cannot use a int"):
        as_source_collection([1])


def test_duplicate_labels_name_both_sources(tree):
    coll = RecordSourceCollection([cu(name="x"), cu(name="y"), cu(name="x")])
    with pytest.raises(InputError, match=r"x: two sources with the same label: record 0 and "
                                         r"record 2"):
        coll.structures()
    rejected = []
    assert [s.name for s in coll.structures(on_error="skip", rejected=rejected)] == ["x", "y"]
    assert rejected == [Rejection("x", "x: two sources with the same label: record 0 and record 2")]
    a = tree / "data" / "a.xsf"
    with pytest.raises(InputError, match=r"two sources with the same label: file .*a.xsf "
                                         r"\(item 1 of the file list\) and file .*a.xsf "
                                         r"\(item 2 of the file list\)"):
        FileListSourceCollection([a, str(a).replace("/data/", "/data/./")]).structures()


def test_on_error_value_is_checked(tree):
    with pytest.raises(ConfigError, match="on_error must be one of raise, skip"):
        RecordSourceCollection([cu()]).structures(on_error="ignore")


def test_require_energy(tree):
    no_energy = cu(energy=None, name="n")
    with pytest.raises(InputError, match="n: no total energy"):
        RecordSourceCollection([no_energy]).structures()
    assert len(RecordSourceCollection([no_energy], require_energy=False).structures()) == 1
