"""A merged database as an index over its shards (``merge_databases(link=True)``,
what the workflow's merge writes): the same content as a copying merge, one copy
of the data on disk, movable as a folder, and refused once a shard is missing or
rebuilt with other content."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from nnpflow import SchemaError, Structure
from nnpflow.database import DatabaseReader, database_info, merge_databases, write_database
from nnpflow.descriptors import ChebyshevDescriptor


def cells(n: int, seed: int) -> list[Structure]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = rng.uniform(3.6, 3.9)
        base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * a
        pos = base + rng.normal(scale=0.05, size=base.shape)
        sp = list(np.where(rng.random(4) < 0.5, "Au", "Cu"))
        out.append(Structure(positions=pos, species=sp, cell=np.eye(3) * a,
                             energy=float(rng.normal()), forces=rng.normal(size=(4, 3)),
                             name=f"set{seed}/c{i:02d}.xsf"))
    return out


DESC = dict(species=["Cu", "Au"], rad_order=3, rad_cutoff=4.0, ang_order=2, ang_cutoff=3.0)


def shards(folder, seeds=(1, 2, 3), n=10):
    d = ChebyshevDescriptor(**DESC)
    return [write_database(folder / f"shard_{k}.h5", cells(n, seed), descriptor=d,
                           persist_features=True, persist_force_derivatives=True,
                           block_structures=4)
            for k, seed in enumerate(seeds)]


def content(path):
    with DatabaseReader(path) as r:
        out = [(r.names(), r.energies.tolist(), r.fingerprint, r.statistics)]
        for i in range(len(r)):
            s = r.structure(i)
            out.append((s.positions.tolist(), s.forces.tolist(), r.features(i).tolist(),
                        {k: v.tolist() for k, v in r.derivative_arrays(i).items()}))
        return out


def test_index_reads_as_the_copy_and_holds_no_data(tmp_path):
    folder = tmp_path / "database"
    folder.mkdir()
    paths = shards(folder, n=40)
    copy = merge_databases(paths, tmp_path / "copy.h5")
    index = merge_databases(paths, folder / "database.h5", link=True)
    assert content(index) == content(copy)
    shard_bytes = sum(os.path.getsize(p) for p in paths)
    # the index holds attributes and links only: data on disk once (<= 1.1x)
    assert os.path.getsize(index) < 0.1 * shard_bytes
    info = database_info(index)
    assert info["linked_files"] == [str(p) for p in paths]
    assert info["data_bytes"] == os.path.getsize(index) + shard_bytes
    assert info["sizes"] == database_info(copy)["sizes"]
    with h5py.File(index) as h5:
        links = json.loads(h5.attrs["linked_parts"])
        assert [e["file"] for e in links] == ["shard_0.h5", "shard_1.h5", "shard_2.h5"]
        assert isinstance(h5.get("parts/1", getlink=True), h5py.ExternalLink)
    # a copying merge of the index makes a self-contained database
    standalone = merge_databases([index], tmp_path / "standalone.h5")
    with h5py.File(standalone) as h5:
        assert "linked_parts" not in h5.attrs
    assert content(standalone)[1:] == content(copy)[1:]


def test_index_moves_with_its_folder_and_reads_in_another_process(tmp_path):
    folder = tmp_path / "results" / "database"
    folder.mkdir(parents=True)
    paths = shards(folder)
    index = merge_databases(paths, folder / "database.h5", link=True)
    expected = content(index)
    shutil.move(tmp_path / "results", tmp_path / "moved")
    shutil.copytree(tmp_path / "moved", tmp_path / "copied")
    shutil.rmtree(tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import json, sys; sys.path.insert(0, sys.argv[2]); "
            "from test_database_links import content; "
            "print(json.dumps(content(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code,
                          str(tmp_path / "copied" / "database" / "database.h5"),
                          os.path.dirname(__file__)],
                         cwd=elsewhere, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == json.loads(json.dumps(expected))


def test_missing_or_changed_shard_is_refused(tmp_path):
    folder = tmp_path / "database"
    folder.mkdir()
    paths = shards(folder)
    index = merge_databases(paths, folder / "database.h5", link=True)
    with DatabaseReader(index) as r:
        r.features(15)                      # reads through the link ...
    # ... and leaves no handle behind: the shard can be rebuilt in this process
    write_database(paths[1], cells(10, 7), descriptor=ChebyshevDescriptor(**DESC),
                   persist_features=True, persist_force_derivatives=True)
    with pytest.raises(SchemaError, match="shard shard_1.h5 changed since the merge"):
        DatabaseReader(index)
    merge_databases(paths, index, link=True)         # the workflow's rerun of merge
    assert DatabaseReader(index).names()[10] == "set7/c00.xsf"
    os.remove(paths[2])
    with pytest.raises(SchemaError, match="shard shard_2.h5 .* is missing"):
        DatabaseReader(index)
    with pytest.raises(SchemaError, match="is missing"):
        database_info(index)


def test_linking_to_an_index_is_refused(tmp_path):
    paths = shards(tmp_path, seeds=(1, 2))
    index = merge_databases(paths, tmp_path / "index.h5", link=True)
    from nnpflow import ConfigError
    with pytest.raises(ConfigError, match="itself an index"):
        merge_databases([index], tmp_path / "again.h5", link=True)
    assert not (tmp_path / "again.h5").exists()


def test_merge_stage_writes_an_index(tmp_path):
    from nnpflow.stages import merge
    folder = tmp_path / "database"
    folder.mkdir()
    paths = shards(folder, seeds=(4, 5))
    info = merge.run(shards=[str(p) for p in paths], database=str(folder / "database.h5"),
                     summary=str(folder / "database.json"))
    assert info["linked_files"] == [str(p) for p in paths]
    with h5py.File(folder / "database.h5") as h5:      # no dataset of its own
        own = []
        h5.visititems(lambda name, obj: own.append(name)
                      if isinstance(obj, h5py.Dataset) else None)
        assert own == []
    assert DatabaseReader(folder / "database.h5").names()[:2] == ["set4/c00.xsf",
                                                                   "set4/c01.xsf"]


def test_merge_into_the_first_shard_equals_the_copy(tmp_path):
    paths = shards(tmp_path, seeds=(1, 2, 3))
    copy = merge_databases(paths, tmp_path / "copy.h5")
    expected = content(copy)
    merged = merge_databases(paths, tmp_path / "merged.h5", into_first=True)
    assert not paths[0].exists() and paths[1].exists()      # the first shard became it
    assert content(merged) == expected
    with h5py.File(merged) as h5:
        assert sorted(h5["parts"]) == ["0", "1", "2"] and h5.attrs["complete"]
        assert json.loads(h5.attrs["merged_from"])[0] == str(paths[0])
