"""Tests of the HDF5 database for raw structures: schema, round trips, merge,
statistics, fingerprints, errors, fork safety and interrupted builds."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from nnpflow import Structure
from nnpflow.database import (DatabaseReader, database_info, merge_databases,
                              structures_fingerprint, write_database)
from nnpflow.database.statistics import Moments, combine_groups, group_moments
from nnpflow.errors import ConfigError, SchemaError
from nnpflow.sharding import shard_of, unit_label

REPO = Path(__file__).resolve().parents[1]


def random_structures(n: int, seed: int = 0) -> list[Structure]:
    """Structures exercising every field: missing energies/forces/cells,
    charges, total charges, dipoles, frames, non-ASCII labels."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(1, 7))
        periodic = i % 2 == 1
        out.append(Structure(
            positions=rng.normal(size=(k, 3)) * 3,
            species=list(rng.choice(["H", "O", "Cu", "Au"], k)),
            cell=np.diag(rng.uniform(8, 12, 3)) if periodic else None,
            pbc=[True, True, i % 4 != 1] if periodic else None,
            energy=None if i % 5 == 0 else float(rng.normal(-3, 1) * k),
            forces=rng.normal(size=(k, 3)) if i % 3 else None,
            charges=rng.normal(size=k) if i % 4 == 0 else None,
            total_charge=float(rng.integers(-2, 3)) if i % 7 == 0 else None,
            dipole=rng.normal(size=3) if i % 6 == 0 else None,
            name=f"dir/structure_{i}_å.xyz@{i % 3}" if i % 2 else f"arc.tar:m{i}.xsf",
            frame=i % 3 if i % 2 else None))
    return out


def assert_same(a: Structure, b: Structure) -> None:
    assert a.content_hash() == b.content_hash()
    assert a.name == b.name and a.frame == b.frame
    assert (a.cell is None) == (b.cell is None)
    np.testing.assert_array_equal(a.pbc, b.pbc)
    for key in ("energy", "total_charge"):
        assert getattr(a, key) == getattr(b, key)
    for key in ("positions", "forces", "charges", "dipole", "cell"):
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None), key
        if x is not None:
            np.testing.assert_array_equal(x, y)


def test_round_trip_of_every_field(tmp_path):
    structures = random_structures(45)
    path = write_database(tmp_path / "db.h5", structures, block_structures=8)
    with DatabaseReader(path) as r:
        assert len(r) == 45 and r.n_atoms_total == sum(s.n_atoms for s in structures)
        for i, s in enumerate(structures):
            assert_same(r.structure(i), s)
        for s, t in zip(structures, r.iter_structures()):
            assert_same(s, t)
        assert r.names() == [s.name for s in structures]
        assert r.content_hashes() == [s.content_hash() for s in structures]
        np.testing.assert_array_equal(r.has_forces, [s.forces is not None for s in structures])
        np.testing.assert_array_equal(
            r.energies, [np.nan if s.energy is None else s.energy for s in structures])
        assert r.species == ["H", "O", "Cu", "Au"]  # by atomic number
        assert r.schema_version == 1 and not r.has_features


def test_small_cache_and_repeated_close_give_same_data(tmp_path):
    structures = random_structures(30, seed=3)
    path = write_database(tmp_path / "db.h5", structures, block_structures=4)
    r = DatabaseReader(path, cache_size=0)
    for rep in range(3):
        for i in (29, 0, 13, 13, 4):
            assert_same(r.structure(i), structures[i])
        r.close()
    with pytest.raises(IndexError):
        r.structure(30)
    assert_same(r.structure(-1), structures[-1])


def test_empty_database(tmp_path):
    path = write_database(tmp_path / "empty.h5", [])
    with DatabaseReader(path) as r:
        assert len(r) == 0 and list(r.iter_structures()) == []
        assert r.statistics["n_structures"] == 0
    merged = merge_databases([path, path], tmp_path / "m.h5")
    assert len(DatabaseReader(merged)) == 0


def frames(n: int, seed: int = 0) -> list[Structure]:
    rng = np.random.default_rng(seed)
    base = ["O", "H", "H"]
    return [Structure(positions=rng.normal(size=(3, 3)), species=base, energy=float(i),
                      forces=rng.normal(size=(3, 3)), name=f"traj.pkl@{i}", frame=i)
            for i in range(n)]


def test_shared_species_layout_stores_numbers_once(tmp_path):
    structures = frames(50)
    path = write_database(tmp_path / "shared.h5", structures, shared_species=True,
                          block_structures=8)
    with DatabaseReader(path) as r:
        assert r.layout["species_layout"] == "shared"
        with h5py.File(path) as h5:
            assert h5["parts/0/atoms/numbers"].shape == (3,)
        for i, s in enumerate(structures):
            assert_same(r.structure(i), s)


def test_shared_species_falls_back_when_a_frame_differs(tmp_path):
    structures = frames(30)
    odd = structures[21].copy(species=["O", "H", "O"], name="other@0", frame=0)
    structures[21] = odd
    structures.append(Structure(positions=np.zeros((1, 3)), species=["Cu"], energy=1.0,
                                name="single"))
    path = write_database(tmp_path / "mixed.h5", structures, shared_species=True,
                          block_structures=8)
    with DatabaseReader(path) as r:
        assert r.layout["species_layout"] == "per_atom"
        for i, s in enumerate(structures):
            assert_same(r.structure(i), s)


def shards_of(structures, n):
    parts = [[] for _ in range(n)]
    for s in structures:
        parts[shard_of(unit_label(s.name), n)].append(s)
    return parts


def test_merge_equals_single_pass(tmp_path):
    structures = random_structures(80, seed=5)
    parts = shards_of(structures, 3)
    paths = [write_database(tmp_path / f"shard_{k}.h5", p, block_structures=8,
                            filter_meta={"atomic_energies": {"H": -0.5, "O": -2.0, "Cu": -3.0,
                                                             "Au": -3.5}})
             for k, p in enumerate(parts)]
    merged = merge_databases(paths, tmp_path / "merged.h5")
    order = [s for p in parts for s in p]
    single = write_database(tmp_path / "single.h5", order, block_structures=16,
                            filter_meta={"atomic_energies": {"H": -0.5, "O": -2.0, "Cu": -3.0,
                                                             "Au": -3.5}})
    m, s1 = DatabaseReader(merged), DatabaseReader(single)
    assert m.structures_fingerprint == s1.structures_fingerprint
    assert m.fingerprint == s1.fingerprint
    assert m.n_atoms_total == s1.n_atoms_total and len(m) == len(s1)
    for i, s in enumerate(order):
        assert_same(m.structure(i), s)
    # statistics: merged (Chan) == single pass == numpy
    for key in ("energy", "energy_per_atom", "referenced_energy_per_atom", "forces"):
        a, b = m.statistics[key], s1.statistics[key]
        assert a["count"] == b["count"]
        for q in ("mean", "std", "min", "max"):
            assert a[q] == pytest.approx(b[q], rel=1e-12, abs=1e-12)
    e = np.array([s.energy for s in order if s.energy is not None])
    n = np.array([s.n_atoms for s in order if s.energy is not None])
    refs = {"H": -0.5, "O": -2.0, "Cu": -3.0, "Au": -3.5}
    ref = np.array([sum(refs[x] for x in s.species) for s in order if s.energy is not None])
    f = np.concatenate([s.forces.ravel() for s in order if s.forces is not None])
    st = m.statistics
    for key, values in (("energy", e), ("energy_per_atom", e / n),
                        ("referenced_energy_per_atom", (e - ref) / n), ("forces", f)):
        assert st[key]["count"] == len(values)
        assert st[key]["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert st[key]["std"] == pytest.approx(values.std(), rel=1e-12)
        assert st[key]["min"] == values.min() and st[key]["max"] == values.max()
    counts = {}
    for s in order:
        for x in s.species:
            counts[x] = counts.get(x, 0) + 1
    assert st["species_counts"] == counts
    assert st["n_with_forces"] == sum(s.forces is not None for s in order)
    info = database_info(merged)
    assert info["n_parts"] == 3 and info["n_structures"] == 80


def test_merge_copies_compressed_chunks_without_recompressing(tmp_path):
    structures = random_structures(40, seed=8)
    a = write_database(tmp_path / "a.h5", structures[:20], compression="lzf")
    b = write_database(tmp_path / "b.h5", structures[20:], compression="lzf")
    merged = merge_databases([a, b], tmp_path / "m.h5")
    with h5py.File(merged) as h5:
        assert h5["parts/1/structures/cell"].compression == "lzf"
        assert h5["parts/1/atoms/numbers"].compression == "lzf"
    assert DatabaseReader(merged).layout["compression"] == "lzf"


def test_merge_refuses_incompatible_shards(tmp_path):
    s = random_structures(6)
    a = write_database(tmp_path / "a.h5", s[:3], filter_meta={"max_energy": 1.0})
    b = write_database(tmp_path / "b.h5", s[3:], filter_meta={"max_energy": 2.0})
    with pytest.raises(ConfigError, match="filter settings"):
        merge_databases([a, b], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()
    c = write_database(tmp_path / "c.h5", s[3:], dtype="float64")
    with pytest.raises(ConfigError, match="dtype"):
        merge_databases([a, c], tmp_path / "m.h5")
    with pytest.raises(ConfigError, match="at least one"):
        merge_databases([], tmp_path / "m.h5")


def test_structures_fingerprint_covers_labels_content_order_and_filter(tmp_path):
    s = random_structures(5)
    pairs = [(x.name, x.content_hash()) for x in s]
    fp = structures_fingerprint(pairs)
    assert structures_fingerprint(pairs[::-1]) != fp
    assert structures_fingerprint(pairs, {"max_energy": 1.0}) != fp
    renamed = [("other", pairs[0][1])] + pairs[1:]
    assert structures_fingerprint(renamed) != fp
    path = write_database(tmp_path / "db.h5", s)
    assert DatabaseReader(path).structures_fingerprint == fp
    changed = [s[0].copy(energy=(s[0].energy or 0.0) + 1e-9)] + s[1:]
    path2 = write_database(tmp_path / "db2.h5", changed)
    assert DatabaseReader(path2).structures_fingerprint != fp


def test_reader_refuses_newer_unknown_and_incomplete_files(tmp_path):
    path = write_database(tmp_path / "db.h5", random_structures(3))
    with h5py.File(path, "a") as h5:
        h5.attrs["schema_version"] = 99
    with pytest.raises(SchemaError, match="version 99 is newer"):
        DatabaseReader(path)
    with h5py.File(path, "a") as h5:
        h5.attrs["schema_version"] = 1
        h5.attrs["complete"] = False
    with pytest.raises(SchemaError, match="incomplete"):
        DatabaseReader(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["x"] = np.arange(3)
    with pytest.raises(SchemaError, match="not an nnpflow database"):
        DatabaseReader(other)
    with pytest.raises(FileNotFoundError):
        DatabaseReader(tmp_path / "missing.h5")


@pytest.mark.parametrize("compression, level", [("gzip", 1), ("zlib", None), ("lzf", None),
                                                (None, None), ("zstd", 3), ("blosc", 5)])
def test_compression_choices_round_trip(tmp_path, compression, level):
    if compression in ("zstd", "blosc"):
        pytest.importorskip("hdf5plugin")
    s = random_structures(10)
    path = write_database(tmp_path / "db.h5", s, compression=compression,
                          compression_level=level)
    with DatabaseReader(path) as r:
        for i in range(10):
            assert_same(r.structure(i), s[i])
        expected = {"zlib": "gzip", None: "none"}.get(compression, compression)
        assert r.layout["compression"] == expected


@pytest.mark.parametrize("kwargs, message", [
    ({"compression": "bzip9"}, "unknown compression"),
    ({"compression": "lzf", "compression_level": 3}, "no level"),
    ({"compression": "gzip", "compression_level": 12}, "0..9"),
    ({"dtype": "float16"}, "float32"),
    ({"persist_features": True}, "need a descriptor"),
])
def test_bad_writer_options_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        write_database(tmp_path / "db.h5", random_structures(2), **kwargs)
    assert not (tmp_path / "db.h5").exists()


def test_error_while_writing_leaves_no_file_and_keeps_old_one(tmp_path):
    target = tmp_path / "db.h5"
    good = random_structures(5)
    write_database(target, good)
    before = target.read_bytes()

    def broken():
        yield from random_structures(70, seed=9)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        write_database(target, broken(), block_structures=8)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.h5"]
    bad = random_structures(3)
    bad[1] = bad[1].copy(positions=np.full((bad[1].n_atoms, 3), np.nan))
    with pytest.raises(Exception, match="non-finite position"):
        write_database(tmp_path / "bad.h5", bad)
    assert not (tmp_path / "bad.h5").exists()


def _read_in_child(reader, indices, queue):
    queue.put([reader.structure(i).content_hash() for i in indices])


def test_reader_is_fork_and_pickle_safe(tmp_path):
    structures = random_structures(20)
    path = write_database(tmp_path / "db.h5", structures, block_structures=4)
    reader = DatabaseReader(path)
    reader.structure(3)  # the parent's handle is open
    expected = [structures[i].content_hash() for i in (0, 7, 19)]
    for method in ("fork", "spawn"):
        if method not in mp.get_all_start_methods():
            continue
        ctx = mp.get_context(method)
        queue = ctx.Queue()
        p = ctx.Process(target=_read_in_child, args=(reader, [0, 7, 19], queue))
        p.start()
        got = queue.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0 and got == expected
    assert reader.structure(19).content_hash() == expected[2]  # parent still fine


def test_group_moments_and_chan_merge_against_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 4)) * 10 + 3
    g = rng.integers(0, 5, 500)
    count, mean, m2 = group_moments(x, g, 6)
    assert count[5] == 0
    for k in range(5):
        np.testing.assert_allclose(mean[k], x[g == k].mean(0), rtol=1e-13)
        np.testing.assert_allclose(m2[k], ((x[g == k] - x[g == k].mean(0)) ** 2).sum(0),
                                   rtol=1e-12)
    n, mu, mm = combine_groups(count, mean, m2)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(mm / n, x.var(0), rtol=1e-12)
    a = Moments.of(x[:123]).merge(Moments.of(x[123:]))
    np.testing.assert_allclose(a.std, x.std(0), rtol=1e-13)
    np.testing.assert_array_equal(a.min, x.min(0))
    back = Moments.from_dict(json.loads(json.dumps(a.to_dict())))
    np.testing.assert_array_equal(back.mean, a.mean)
    np.testing.assert_array_equal(back.m2, a.m2)


# ------------------------------------------------------------ interrupted builds
_WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from nnpflow import Structure
    from nnpflow.database import write_database

    def structures():
        rng = np.random.default_rng(0)
        for i in range(int(sys.argv[2])):
            yield Structure(positions=rng.normal(size=(4, 3)), species=["H"] * 4,
                            energy=float(i), forces=rng.normal(size=(4, 3)), name=f"s{i}")

    def progress(n):
        print("block", flush=True)
        time.sleep(0.02)

    write_database(sys.argv[1], structures(), block_structures=16, on_progress=progress)
    print("done", flush=True)
""")


def _run_and_kill(script: Path, target: Path, n: int, kill_after_blocks: int | None,
                  delay: float = 0.0) -> bool:
    """Start a writer, SIGKILL it ``delay`` s after ``kill_after_blocks`` progress
    lines (``None``: let it finish).  Returns True when it finished."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(target), str(n)],
                            stdout=subprocess.PIPE, text=True, env=env)
    blocks = 0
    try:
        for line in proc.stdout:
            if line.startswith("block"):
                blocks += 1
                if kill_after_blocks is not None and blocks >= kill_after_blocks:
                    time.sleep(delay)
                    proc.send_signal(signal.SIGKILL)
                    break
            elif line.startswith("done"):
                break
    finally:
        proc.wait(60)
    return proc.returncode == 0


@pytest.mark.parametrize("kill_after, delay", [(1, 0.0), (4, 0.0), (16, 0.0), (16, 0.03),
                                               (16, 0.06)])
def test_sigkill_during_build_never_leaves_a_final_file(tmp_path, kill_after, delay):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER_SCRIPT)
    target = tmp_path / "db.h5"
    n = 256  # 16 blocks; a delay after the last one kills while closing, renaming or after
    finished = _run_and_kill(script, target, n, kill_after, delay)
    if target.exists():  # only possible when the kill came after the rename
        with DatabaseReader(target) as r:
            assert len(r) == n
    else:
        assert not finished
    # a rerun succeeds and gives the complete database
    assert _run_and_kill(script, target, n, None)
    with DatabaseReader(target) as r:
        assert len(r) == n and r.structure(n - 1).energy == float(n - 1)


def test_interrupted_build_keeps_previous_database(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER_SCRIPT)
    target = tmp_path / "db.h5"
    assert _run_and_kill(script, target, 32, None)
    before = target.read_bytes()
    _run_and_kill(script, target, 256, 3)
    assert target.read_bytes() == before


def test_cli_db_info_on_raw_database(tmp_path, capsys):
    from nnpflow.cli import main
    path = write_database(tmp_path / "db.h5", random_structures(12))
    assert main(["db", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "structures      12" in out and "descriptor      none" in out
    assert DatabaseReader(path).fingerprint in out
    assert main(["db", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_structures"] == 12 and info["layout"]["features"] is False


def test_stage_merge_writes_database_and_summary(tmp_path):
    from nnpflow.stages import merge
    s = random_structures(20)
    parts = shards_of(s, 2)
    shards = [str(write_database(tmp_path / f"shard_{k}.h5", p)) for k, p in enumerate(parts)]
    info = merge.run(shards=shards, database=str(tmp_path / "database.h5"),
                     summary=str(tmp_path / "database.json"))
    summary = json.loads((tmp_path / "database.json").read_text())
    assert summary["n_structures"] == 20 == info["n_structures"]
    r = DatabaseReader(tmp_path / "database.h5")
    assert summary["fingerprint"] == r.fingerprint
    assert summary["structures_fingerprint"] == r.structures_fingerprint
    assert summary["statistics"]["n_structures"] == 20


def test_incompressible_arrays_skip_the_filter_unless_asked(tmp_path):
    from nnpflow.database.writer import worth_compressing
    rng = np.random.default_rng(0)
    assert not worth_compressing(rng.normal(size=(5000, 3)))
    assert worth_compressing(np.repeat(np.arange(50, dtype=np.int32), 100))
    s = random_structures(40)
    default = write_database(tmp_path / "a.h5", s)
    everything = write_database(tmp_path / "b.h5", s, skip_incompressible=False)
    with h5py.File(default) as h5:
        assert h5["parts/0/atoms/positions"].compression is None
        assert h5["parts/0/atoms/numbers"].compression == "gzip"
    with h5py.File(everything) as h5:
        assert h5["parts/0/atoms/positions"].compression == "gzip"
    assert "atoms/positions" in DatabaseReader(default).layout["uncompressed"]
    assert DatabaseReader(everything).layout["uncompressed"] == []
    for path in (default, everything):
        with DatabaseReader(path) as r:
            for i in range(40):
                assert_same(r.structure(i), s[i])
