"""Tests of persisted features and force derivatives, exact statistics, fingerprints,
the parallel sharded build, the build/merge stages and the ``nnpflow db`` CLI."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
import torch

from nnpflow import DescriptorMismatchError, InputError, Structure
from nnpflow.database import DatabaseReader, merge_databases, write_database
from nnpflow.database.build import build_sharded
from nnpflow.descriptors import ChebyshevDescriptor
from nnpflow.sharding import shard_of, unit_label


def make_descriptor(**changes) -> ChebyshevDescriptor:
    kw = dict(species=["Cu", "Au"], rad_order=4, rad_cutoff=4.5, ang_order=2, ang_cutoff=3.5,
              min_cutoff=0.55)
    kw.update(changes)
    return ChebyshevDescriptor(**kw)


def cu_au_cells(n: int, seed: int = 0, forces_every: int = 1) -> list[Structure]:
    """Small Cu/Au cells (8 atoms) with EMT energies and forces; every
    ``forces_every``-th keeps its forces, and the last one is an isolated cluster."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.6, 3.9), cubic=True).repeat((2, 1, 1))
        atoms.set_chemical_symbols(np.where(rng.random(8) < 0.5, "Au", "Cu").tolist())
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        if i == n - 1:  # an isolated cluster
            atoms.pbc = False
            atoms.cell = np.zeros((3, 3))
        atoms.calc = EMT()
        atoms.get_forces()  # fills atoms.calc.results (energy and forces)
        s = Structure.from_ase(atoms, name=f"cells/c{i:03d}.xsf")
        if i % forces_every:
            s = s.copy(forces=None)
        out.append(s)
    return out


@pytest.fixture(scope="module")
def descriptor():
    return make_descriptor()


@pytest.fixture(scope="module")
def structures():
    return cu_au_cells(40, seed=1, forces_every=3)


@pytest.fixture(scope="module")
def db(tmp_path_factory, descriptor, structures):
    path = tmp_path_factory.mktemp("db") / "features.h5"
    write_database(path, structures, descriptor=descriptor, persist_features=True,
                   persist_force_derivatives=True, block_structures=8)
    return path


@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-6), ("float64", 1e-13)])
def test_features_read_back_equal_recomputation(tmp_path, descriptor, structures, dtype, rtol):
    path = write_database(tmp_path / "f.h5", structures[:12], descriptor=descriptor,
                          persist_features=True, dtype=dtype, block_structures=5)
    with DatabaseReader(path) as r:
        assert r.has_features and not r.has_force_derivatives
        for i, s in enumerate(structures[:12]):
            stored = r.features(i)
            assert stored.dtype == np.dtype(dtype)
            expected = descriptor.featurize(s).detach().numpy()
            np.testing.assert_allclose(stored, expected, rtol=rtol, atol=rtol * 1e-2)
        feats, offsets = r.features_batch([7, 2, 7])
        np.testing.assert_array_equal(feats, np.concatenate([r.features(i) for i in (7, 2, 7)]))
        np.testing.assert_array_equal(offsets, [0, 8, 16, 24])


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-11)])
def test_force_contraction_from_stored_derivatives_equals_on_the_fly(
        tmp_path, descriptor, structures, dtype, tol):
    subset = structures[:10]
    path = write_database(tmp_path / "d.h5", subset, descriptor=descriptor,
                          persist_features=True, persist_force_derivatives=True, dtype=dtype,
                          block_structures=4)
    rng = np.random.default_rng(0)
    with DatabaseReader(path) as r:
        for i, s in enumerate(subset):
            stored = r.derivatives(i, descriptor)
            if s.forces is None:
                assert stored is None
                continue
            _, fresh = descriptor.featurize_with_derivatives(s)
            dE_dG = torch.from_numpy(rng.normal(size=(s.n_atoms, descriptor.n_features)))
            f_fresh = fresh.forces(dE_dG.to(torch.float64))
            f_stored = stored.forces(dE_dG.to(torch.float64))
            err = (f_stored.double() - f_fresh.double()).abs().max() / f_fresh.abs().max()
            assert float(err) < tol


def test_derivatives_stored_only_for_structures_with_forces(db, structures):
    with DatabaseReader(db) as r:
        np.testing.assert_array_equal(r.has_forces, [s.forces is not None for s in structures])
        for i, s in enumerate(structures):
            assert (r.derivative_arrays(i) is None) == (s.forces is None)
        assert r.layout["derivative_keys"]


def stored_features(reader, indices):
    x = np.concatenate([reader.features(i) for i in indices]).astype(np.float64)
    sp = np.concatenate([reader.species_index(i, {"Cu": 0, "Au": 1}) for i in indices])
    return x, sp


def test_feature_statistics_exact_for_all_and_subsets(db, structures):
    with DatabaseReader(db) as r:
        everything = r.feature_statistics()
        x, sp = stored_features(r, range(len(r)))
        for t, s in enumerate(["Cu", "Au"]):
            assert everything[s]["count"] == (sp == t).sum()
            np.testing.assert_allclose(everything[s]["mean"], x[sp == t].mean(0), rtol=1e-12,
                                       atol=1e-14)
            np.testing.assert_allclose(everything[s]["std"], x[sp == t].std(0), rtol=1e-10,
                                       atol=1e-14)
            per = r.statistics["features"]["per_species"][s]
            np.testing.assert_array_equal(per["min"], x[sp == t].min(0))
            np.testing.assert_array_equal(per["max"], x[sp == t].max(0))
        subset = [3, 17, 17, 0, 39, 22, 8]  # duplicates count twice
        stats = r.feature_statistics(subset)
        x, sp = stored_features(r, subset)
        for t, s in enumerate(["Cu", "Au"]):
            assert stats[s]["count"] == (sp == t).sum()
            np.testing.assert_allclose(stats[s]["mean"], x[sp == t].mean(0), rtol=1e-12,
                                       atol=1e-14)
            np.testing.assert_allclose(stats[s]["std"], x[sp == t].std(0), rtol=1e-10,
                                       atol=1e-14)


def test_merged_statistics_equal_single_pass(tmp_path, descriptor, structures):
    parts = [[], [], []]
    for s in structures:
        parts[shard_of(unit_label(s.name), 3)].append(s)
    shards = [write_database(tmp_path / f"s{k}.h5", p, descriptor=descriptor,
                             persist_features=True, block_structures=4)
              for k, p in enumerate(parts)]
    merged = DatabaseReader(merge_databases(shards, tmp_path / "m.h5"))
    single = DatabaseReader(write_database(tmp_path / "single.h5", [s for p in parts for s in p],
                                           descriptor=descriptor, persist_features=True))
    assert merged.fingerprint == single.fingerprint
    a = merged.statistics["features"]["per_species"]
    b = single.statistics["features"]["per_species"]
    for s in ("Cu", "Au"):
        assert a[s]["count"] == b[s]["count"]
        for q in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(a[s][q], b[s][q], rtol=1e-12, atol=1e-14)
    idx = [1, 5, 30, 31, 2]
    sm, ss = merged.feature_statistics(idx), single.feature_statistics(idx)
    for s in ("Cu", "Au"):
        np.testing.assert_allclose(sm[s]["std"], ss[s]["std"], rtol=1e-12, atol=1e-14)


def test_fingerprints_track_descriptor_and_content(tmp_path, structures):
    a = DatabaseReader(write_database(tmp_path / "a.h5", structures[:6],
                                      descriptor=make_descriptor(), persist_features=True))
    b = DatabaseReader(write_database(tmp_path / "b.h5", structures[:6],
                                      descriptor=make_descriptor(rad_order=5),
                                      persist_features=True))
    c = DatabaseReader(write_database(tmp_path / "c.h5", structures[:6]))
    d = DatabaseReader(write_database(tmp_path / "d.h5", structures[:6],
                                      descriptor=make_descriptor(), persist_features=True,
                                      persist_force_derivatives=True))
    assert a.structures_fingerprint == b.structures_fingerprint == c.structures_fingerprint
    assert len({a.fingerprint, b.fingerprint, c.fingerprint, d.fingerprint}) == 4
    assert a.descriptor_sha256 == make_descriptor().fingerprint
    assert a.descriptor().fingerprint == make_descriptor().fingerprint
    with pytest.raises(DescriptorMismatchError):
        merge_databases([a.path, b.path], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_species_outside_descriptor_is_a_clear_error(tmp_path, descriptor):
    bad = Structure(positions=[[0, 0, 0], [1.5, 0, 0]], species=["Cu", "Ni"], energy=1.0,
                    name="odd.xsf")
    with pytest.raises(InputError, match="odd.xsf: species Ni not in the descriptor"):
        write_database(tmp_path / "x.h5", [bad], descriptor=descriptor, persist_features=True)
    assert not (tmp_path / "x.h5").exists()


def test_sharded_build_order_and_content(tmp_path, descriptor, structures):
    serial = build_sharded(structures, tmp_path / "serial.h5", descriptor, n_workers=1)
    par = build_sharded(structures, tmp_path / "par.h5", descriptor, n_workers=2)
    assert serial.n_structures == par.n_structures == len(structures)
    assert serial.n_shards == 1 and par.n_shards == 2
    expected = [s.name for k in range(2) for s in structures
                if shard_of(unit_label(s.name), 2) == k]
    with DatabaseReader(par.path) as p, DatabaseReader(serial.path) as q:
        assert p.names() == expected
        assert q.names() == [s.name for s in structures]
        pos = {name: i for i, name in enumerate(q.names())}
        for i, name in enumerate(p.names()):
            np.testing.assert_array_equal(p.features(i), q.features(pos[name]))
            a, b = p.derivative_arrays(i), q.derivative_arrays(pos[name])
            assert (a is None) == (b is None)
            if a is not None:
                for key in a:
                    np.testing.assert_array_equal(a[key], b[key])
        assert p.structures_fingerprint != q.structures_fingerprint  # order differs
        for key in ("energy", "forces"):
            assert p.statistics[key]["mean"] == pytest.approx(q.statistics[key]["mean"],
                                                              rel=1e-12)
    # n_workers=1 with two shards, and spawned workers, give the same database
    one = build_sharded(structures, tmp_path / "one.h5", descriptor, n_workers=1, n_shards=2)
    assert one.fingerprint == par.fingerprint
    spawned = build_sharded(structures[:8], tmp_path / "spawn.h5", descriptor, n_workers=2,
                            start_method="spawn")
    forked = build_sharded(structures[:8], tmp_path / "fork.h5", descriptor, n_workers=2)
    assert spawned.fingerprint == forked.fingerprint


def _tar_of(structures, path):
    from nnpflow.io.xsf import write_xsf
    with tarfile.open(path, "w:gz") as tar:
        for i, s in enumerate(structures):
            buf = io.StringIO()
            write_xsf(buf, [s])
            data = buf.getvalue().encode()
            info = tarfile.TarInfo(f"set/m{i:03d}.xsf")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sharded_build_from_tar_archive_keeps_every_member_once(tmp_path, descriptor,
                                                                structures):
    from nnpflow.sources import TarArchiveXSFSourceCollection
    periodic = [s for s in structures if s.cell is not None][:15]
    archive = _tar_of(periodic, tmp_path / "data.tar.gz")
    result = build_sharded(TarArchiveXSFSourceCollection(archive), tmp_path / "tar.h5",
                           descriptor, n_workers=2)
    with DatabaseReader(result.path) as r:
        names = r.names()
        assert len(names) == 15 and len(set(names)) == 15
        assert sorted(names) == sorted(f"{archive.as_posix()}:set/m{i:03d}.xsf"
                                       for i in range(15))
        by_name = {n: i for i, n in enumerate(names)}
        for i, s in enumerate(periodic):
            got = r.structure(by_name[[n for n in names if n.endswith(f"m{i:03d}.xsf")][0]])
            np.testing.assert_allclose(got.positions, s.positions, atol=1e-6)
    assert DatabaseReader(result.path).sources["content_hashes"]


def test_sharded_build_skip_lists_rejected_sources(tmp_path, descriptor, structures):
    bad = Structure(positions=[[0, 0, 0], [2, 0, 0]], species=["Cu", "Ni"], energy=-1.0,
                    name="bad_species.xsf")
    result = build_sharded(structures[:6] + [bad], tmp_path / "skip.h5", descriptor,
                           n_workers=2, on_error="skip", max_energy=-100.0)
    # every cell is above -100 eV/atom except none: all filtered, bad one rejected
    assert [r.label for r in result.rejected] == ["bad_species.xsf"]
    assert "Ni" in result.rejected[0].reason
    assert len(result.filtered) == 6 and result.n_structures == 0
    with pytest.raises(InputError, match="bad_species.xsf"):
        build_sharded(structures[:6] + [bad], tmp_path / "raise.h5", descriptor, n_workers=2)
    assert not (tmp_path / "raise.h5").exists()
    assert not list(tmp_path.glob(".raise.h5*"))


_SHARDED_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from nnpflow import Structure
    from nnpflow.database.build import build_sharded
    from nnpflow.descriptors import ChebyshevDescriptor
    from nnpflow.sources import RecordSourceCollection

    rng = np.random.default_rng(0)
    records = [Structure(positions=rng.uniform(0, 6, (6, 3)), species=["Cu", "Au"] * 3,
                         cell=np.eye(3) * 6.0, energy=float(i), forces=rng.normal(size=(6, 3)),
                         name=f"r{i}") for i in range(int(sys.argv[2]))]
    d = ChebyshevDescriptor(species=["Cu", "Au"], rad_order=4, rad_cutoff=4.0, ang_order=2,
                            ang_cutoff=3.0, min_cutoff=0.1)
    print("start", flush=True)
    build_sharded(RecordSourceCollection(records), sys.argv[1], d, n_workers=2,
                  block_structures=8, check_overlaps=False)  # random atoms may overlap
    print("done", flush=True)
""")


@pytest.mark.slow
def test_sigkill_of_sharded_build_leaves_no_final_file(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(_SHARDED_SCRIPT)
    target = tmp_path / "db.h5"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    n = "200"
    for delay in (0.2, 0.7, 1.4):  # while the workers build, around the merge, later
        # its own process group, so the kill takes the workers too
        proc = subprocess.Popen([sys.executable, str(script), str(target), n],
                                stdout=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        assert proc.stdout.readline().startswith("start")
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        if target.exists():  # only when the kill came after the final rename
            with DatabaseReader(target) as r:
                assert len(r) == 200
            target.unlink()
    rerun = subprocess.run([sys.executable, str(script), str(target), n],
                           capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    with DatabaseReader(target) as r:
        assert len(r) == 200 and r.has_force_derivatives
    leftovers = [p.name for p in tmp_path.iterdir() if ".shards-" in p.name]
    assert leftovers == []  # stale shard folders of the killed builds are cleaned up


def test_stage_build_featurises_a_raw_shard(tmp_path, structures):
    from nnpflow.stages import build as build_stage
    from nnpflow.stages import merge as merge_stage
    raw = []
    for k in range(2):
        part = [s for s in structures if shard_of(unit_label(s.name), 2) == k]
        raw.append(write_database(tmp_path / f"raw_{k}.h5", part,
                                  sources_meta={"content_hashes": {f"f{k}": "0" * 64}},
                                  filter_meta={"atomic_energies": {"Cu": -1.0, "Au": -2.0}}))
    desc_cfg = {"rad_order": 4, "rad_cutoff": 4.5, "ang_order": 2, "ang_cutoff": 3.5,
                "min_cutoff": 0.55}
    shards = []
    for k in range(2):
        out = tmp_path / f"shard_{k}.h5"
        build_stage.run(structures=str(raw[k]), database=str(out), descriptor=desc_cfg,
                        database_cfg={"shards": 2, "persist_features": True,
                                      "persist_force_derivatives": True,
                                      "compression": "lzf", "dtype": "float32"},
                        species=["Cu", "Au"], threads=1)
        shards.append(str(out))
        with DatabaseReader(out) as feat, DatabaseReader(raw[k]) as r0:
            assert feat.structures_fingerprint == r0.structures_fingerprint
            assert feat.has_features and feat.has_force_derivatives
            assert feat.filter == r0.filter and feat.sources == r0.sources
            s = r0.structure(0)
            np.testing.assert_allclose(feat.features(0),
                                       make_descriptor().featurize(s).numpy(), rtol=2e-6,
                                       atol=1e-8)
    info = merge_stage.run(shards=shards, database=str(tmp_path / "database.h5"),
                           summary=str(tmp_path / "database.json"))
    assert info["n_structures"] == len(structures)
    assert info["descriptor_sha256"] == make_descriptor().fingerprint
    assert info["sources"]["content_hashes"] == {"f0": "0" * 64, "f1": "0" * 64}
    from nnpflow.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown key"):
        build_stage.run(structures=str(raw[0]), database=str(tmp_path / "x.h5"),
                        descriptor=desc_cfg, database_cfg={"bogus": 1}, species=["Cu", "Au"])


def test_cli_db_build_and_info(tmp_path, structures, capsys):
    from nnpflow.cli import main
    from nnpflow.io.xsf import write_xsf
    files = []
    for i, s in enumerate([s for s in structures if s.cell is not None][:6]):
        f = tmp_path / f"s{i}.xsf"
        write_xsf(f, [s])
        files.append(str(f))
    out = tmp_path / "cli.h5"
    status = main(["db", "build", *files, "-o", str(out), "--species", "Cu", "Au",
                   "--rad-order", "4", "--rad-cutoff", "4.5", "--ang-order", "2",
                   "--ang-cutoff", "3.5", "--workers", "2", "--no-progress"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_structures"] == 6
    with DatabaseReader(out) as r:
        assert r.has_features and r.has_force_derivatives
        assert r.descriptor_sha256 == make_descriptor().fingerprint
    assert main(["db", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "structures      6" in text and '"rad_order":4' in text.replace(" ", "")
    # descriptor JSON taken from the database itself; no derivatives this time
    desc_json = json.dumps(DatabaseReader(out).descriptor_config)
    out2 = tmp_path / "cli2.h5"
    assert main(["db", "build", *files, "-o", str(out2), "--descriptor-json", desc_json,
                 "--no-persist-derivatives", "--no-progress"]) == 0
    capsys.readouterr()
    with DatabaseReader(out2) as r:
        assert r.has_features and not r.has_force_derivatives
    assert main(["db", "build", *files, "-o", str(tmp_path / "x.h5"), "--no-progress"]) == 2
    assert "--species" in capsys.readouterr().err


def test_derivatives_first_appearing_in_a_later_block(tmp_path, descriptor):
    cells = [c.copy(forces=None) if i < 10 else c
             for i, c in enumerate(cu_au_cells(16, seed=4))]
    path = write_database(tmp_path / "late.h5", cells, descriptor=descriptor,
                          persist_features=True, persist_force_derivatives=True,
                          block_structures=4)
    rng = np.random.default_rng(1)
    with DatabaseReader(path) as r:
        for i, c in enumerate(cells):
            d = r.derivatives(i, descriptor)
            assert (d is None) == (c.forces is None)
            if d is not None:
                _, fresh = descriptor.featurize_with_derivatives(c)
                g = torch.from_numpy(rng.normal(size=(8, descriptor.n_features)))
                ref = fresh.forces(g)
                assert float((d.forces(g) - ref).abs().max() / ref.abs().max()) < 1e-5
