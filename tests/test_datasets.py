"""Tests of the spec-000 datasets: samples, filtering, splits, caches, HDF5 modes,
descriptor recovery and mismatch, collate, and DataLoader worker equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from nnpflow import DescriptorMismatchError, Structure
from nnpflow.database import DatabaseReader, write_database
from nnpflow.datasets import (Batch, CachedStructureDataset, HDF5StructureDataset,
                              StructureDataset, collate_samples, configure_runtime_caches,
                              feature_statistics, train_test_split, train_test_split_dataset)
from nnpflow.descriptors import ChebyshevDescriptor
from nnpflow.errors import ConfigError


def make_descriptor(**changes) -> ChebyshevDescriptor:
    kw = dict(species=["Cu", "Au"], rad_order=4, rad_cutoff=4.5, ang_order=2, ang_cutoff=3.5,
              min_cutoff=0.55)
    kw.update(changes)
    return ChebyshevDescriptor(**kw)


def cu_au_cells(n: int, seed: int = 0) -> list[Structure]:
    """8-atom Cu/Au cells with EMT labels; every third without forces."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.6, 3.9), cubic=True).repeat((2, 1, 1))
        atoms.set_chemical_symbols(np.where(rng.random(8) < 0.5, "Au", "Cu").tolist())
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_forces()  # fills atoms.calc.results (energy and forces)
        s = Structure.from_ase(atoms, name=f"cells/c{i:03d}.xsf")
        out.append(s if i % 3 else s.copy(forces=None))
    return out


@pytest.fixture(scope="module")
def descriptor():
    return make_descriptor()


@pytest.fixture(scope="module")
def cells():
    return cu_au_cells(30, seed=2)


@pytest.fixture(scope="module")
def persisted(tmp_path_factory, descriptor, cells):
    path = tmp_path_factory.mktemp("ds") / "persisted.h5"
    ds = HDF5StructureDataset(descriptor, path, sources=cells, mode="build")
    ds.build_database(persist_features=True, persist_force_derivatives=True)
    ds.close()
    return path


# ------------------------------------------------------------- spec 000 examples
def h_descriptor():
    return ChebyshevDescriptor(species=["H"], rad_order=1, rad_cutoff=2.0, ang_order=0,
                               ang_cutoff=2.0, min_cutoff=0.1, device="cpu")


def h_structures(forces=True):
    kw = {"forces": np.zeros((3, 3))} if forces else {}
    return [Structure(positions=np.array([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.9, 0.0]]),
                      species=["H", "H", "H"], energy=0.0, **kw),
            Structure(positions=np.array([[0.1, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
                      species=["H", "H", "H"], energy=0.5, **kw)]


def test_spec_examples_structure_and_cached_datasets():
    d = h_descriptor()
    ds = StructureDataset(structures=h_structures(), descriptor=d)
    assert len(ds) == 2
    sample = ds[0]
    assert sample["features"].shape == torch.Size([3, 3])
    assert sample["use_forces"] is True
    for key in ("energy", "forces", "positions", "species", "n_atoms", "name",
                "species_index", "derivatives"):
        assert key in sample
    train_ds, test_ds = train_test_split(ds, test_fraction=0.5, seed=42)
    assert (len(train_ds), len(test_ds)) == (1, 1)
    cached = CachedStructureDataset(structures=h_structures(forces=False), descriptor=d,
                                    show_progress=False)
    assert cached[0]["features"].shape == torch.Size([3, 3])
    assert cached[0]["use_forces"] is False


def test_samples_agree_across_dataset_classes(tmp_path, descriptor, cells, persisted):
    on_the_fly = StructureDataset(cells, descriptor)
    cached = CachedStructureDataset(cells, descriptor)
    loaded = HDF5StructureDataset(None, persisted, mode="load")
    raw_path = write_database(tmp_path / "raw.h5", cells)
    raw = HDF5StructureDataset(descriptor, raw_path, mode="load")
    assert len(on_the_fly) == len(cached) == len(loaded) == len(raw) == len(cells)
    for i in range(len(cells)):
        ref = on_the_fly[(i, False)]
        for other in (cached[i], loaded[(i, False)], raw[(i, False)]):
            assert other["name"] == ref["name"] == cells[i].name
            assert other["energy"] == ref["energy"] == cells[i].energy
            torch.testing.assert_close(other["features"], ref["features"], rtol=2e-6, atol=1e-7)
            assert torch.equal(other["species_index"], ref["species_index"])
            torch.testing.assert_close(other["positions"], ref["positions"])
            assert (other["forces"] is None) == (cells[i].forces is None)
            assert other["species"] == cells[i].species and other["n_atoms"] == 8


def test_force_view_uses_persisted_payloads_without_featurising(descriptor, cells, persisted):
    ds = HDF5StructureDataset(descriptor, persisted, mode="load")

    def forbidden(*args, **kwargs):
        raise AssertionError("featurised although features and derivatives are persisted")

    fresh = make_descriptor()
    ds.descriptor.featurize_batch = forbidden
    ds.descriptor.featurize_batch_with_derivatives = forbidden
    try:
        rng = np.random.default_rng(0)
        for i in range(len(ds)):
            s = ds[i]
            assert s["use_forces"] == (cells[i].forces is not None)
            if not s["use_forces"]:
                assert s["derivatives"] is None
                continue
            _, d = fresh.featurize_with_derivatives(cells[i])
            g = torch.from_numpy(rng.normal(size=(8, descriptor.n_features)))
            f_ref = d.forces(g)
            f_db = s["derivatives"].forces(g)
            assert float((f_db.double() - f_ref).abs().max() / f_ref.abs().max()) < 1e-5
    finally:
        del ds.descriptor.featurize_batch, ds.descriptor.featurize_batch_with_derivatives


def test_collated_batch_contracts_all_forces_at_once(descriptor, persisted):
    ds = HDF5StructureDataset(None, persisted, mode="load")
    idx = list(range(12))
    samples = ds[idx]
    batch = collate_samples(samples)
    assert isinstance(batch, Batch) and batch.n_structures == 12
    assert batch.features.shape == (96, descriptor.n_features)
    assert torch.equal(batch.atom_structure, torch.arange(12).repeat_interleave(8))
    g = torch.randn(96, descriptor.n_features, dtype=torch.float64)
    contracted = batch.derivatives.forces(g[batch.force_atom_index])
    per_sample = torch.cat([s["derivatives"].forces(g[8 * k:8 * k + 8])
                            for k, s in enumerate(samples) if s["use_forces"]])
    torch.testing.assert_close(contracted, per_sample)
    assert batch.force_mask.sum() == 8 * sum(s["use_forces"] for s in samples)
    torch.testing.assert_close(batch.forces[batch.force_atom_index],
                               torch.cat([s["forces"] for s in samples if s["use_forces"]]))
    assert torch.isnan(batch.energy).sum() == 0 and batch.has_energy.all()


def test_force_selection_and_explicit_views(descriptor, persisted, cells):
    ds = HDF5StructureDataset(descriptor, persisted, mode="load")
    with_forces = np.array([c.forces is not None for c in cells])
    np.testing.assert_array_equal(ds.force_selection, with_forces)
    ds.set_force_selection(False)
    assert not any(ds[i]["use_forces"] for i in range(len(ds)))
    assert ds[(1, True)]["use_forces"] and ds[(1, True)]["derivatives"] is not None
    assert ds[(0, True)]["use_forces"] is False  # structure 0 has no forces
    ds.set_force_selection([1, 2, 3])
    assert [ds[i]["use_forces"] for i in range(5)] == [False, True, True, False, False]
    ds.set_force_selection(None)
    np.testing.assert_array_equal(ds.force_selection, with_forces)
    cached = CachedStructureDataset(cells[:3], descriptor)
    with pytest.raises(ValueError, match="energy-only"):
        cached.set_force_selection([1])


def test_filtering_is_construction_time_for_every_dataset(tmp_path, descriptor, cells):
    refs = {"Cu": -0.5, "Au": -0.3}
    per_atom = np.array([(c.energy - sum(refs[x] for x in c.species)) / 8 for c in cells])
    cut = float(np.median(per_atom))
    keep = [c.name for c, e in zip(cells, per_atom) if e <= cut]
    sd = StructureDataset(cells, descriptor, max_energy=cut, atomic_energies=refs)
    cd = CachedStructureDataset(cells, descriptor, max_energy=cut, atomic_energies=refs)
    hb = HDF5StructureDataset(descriptor, tmp_path / "f.h5", sources=cells, mode="build",
                              max_energy=cut, atomic_energies=refs)
    hb.build_database(persist_features=True)
    hl = HDF5StructureDataset(descriptor, write_database(tmp_path / "all.h5", cells), mode="load",
                              max_energy=cut, atomic_energies=refs)
    for ds in (sd, cd, hb, hl):
        assert [ds[i]["name"] for i in range(len(ds))] == keep
        assert ds.atomic_energies == refs
        np.testing.assert_allclose(ds.referenced_energies_per_atom(),
                                   per_atom[per_atom <= cut])
    assert len(sd.filtered) == len(cells) - len(keep)
    assert "max_energy" in sd.filtered[0].reason
    # without references the filter applies to E/N as given
    raw = np.array([c.energy / 8 for c in cells])
    sd0 = StructureDataset(cells, descriptor, max_energy=float(np.median(raw)))
    assert len(sd0) == int((raw <= np.median(raw)).sum())
    assert HDF5StructureDataset(None, tmp_path / "f.h5", mode="load").atomic_energies == refs


def test_splits_and_subsets_reuse_the_cache(descriptor, cells):
    cached = CachedStructureDataset(cells, descriptor)
    train, test = train_test_split_dataset(cached, test_fraction=0.2, seed=7)
    assert isinstance(train, Subset) and len(train) == 24 and len(test) == 6
    assert sorted(train.indices + test.indices) == list(range(30))
    again = train_test_split(cached, 0.2, 7)
    assert again[0].indices == train.indices
    base = cached._all_features
    lo = base.data_ptr()
    hi = lo + base.numel() * base.element_size()
    for s in (train[0], test[3]):
        assert lo <= s["features"].data_ptr() < hi  # a view of the base cache, no copy
    stats = feature_statistics(train)
    x = torch.cat([train[k]["features"] for k in range(len(train))]).double().numpy()
    sp = torch.cat([train[k]["species_index"] for k in range(len(train))]).numpy()
    for t, sym in enumerate(descriptor.species):
        np.testing.assert_allclose(stats[sym]["mean"], x[sp == t].mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats[sym]["std"], x[sp == t].std(0), rtol=1e-9, atol=1e-12)
    batch = cached.get_batch([3, 1, 4])
    ref = collate_samples([cached[3], cached[1], cached[4]])
    torch.testing.assert_close(batch.features, ref.features)
    torch.testing.assert_close(batch.energy, ref.energy)
    assert batch.names == ref.names


def test_hdf5_subset_statistics_match_on_the_fly(descriptor, cells, persisted):
    ds = HDF5StructureDataset(descriptor, persisted, mode="load")
    train, _ = train_test_split(ds, 0.3, seed=1)
    from_db = feature_statistics(train)
    reference = feature_statistics(Subset(StructureDataset(cells, descriptor), train.indices))
    for sym in descriptor.species:
        assert from_db[sym]["count"] == reference[sym]["count"]
        np.testing.assert_allclose(from_db[sym]["mean"], reference[sym]["mean"], rtol=1e-6,
                                   atol=1e-8)
        np.testing.assert_allclose(from_db[sym]["std"], reference[sym]["std"], rtol=1e-5,
                                   atol=1e-7)


def test_load_recovers_descriptor_and_refuses_a_different_one(tmp_path, persisted, cells):
    loaded = HDF5StructureDataset(None, persisted, mode="load")
    assert loaded.descriptor.fingerprint == make_descriptor().fingerprint
    with pytest.raises(DescriptorMismatchError, match="rad_order"):
        HDF5StructureDataset(make_descriptor(rad_order=6), persisted, mode="load")
    raw = write_database(tmp_path / "raw.h5", cells[:3])
    with pytest.raises(DescriptorMismatchError, match="no persisted descriptor"):
        HDF5StructureDataset(None, raw, mode="load")
    with pytest.raises(DescriptorMismatchError, match="species"):
        HDF5StructureDataset(make_descriptor(species=["Cu", "Ag"]), raw, mode="load")


def test_hdf5_modes(tmp_path, descriptor, cells):
    path = tmp_path / "auto.h5"
    with pytest.raises(ConfigError, match="needs sources"):
        HDF5StructureDataset(descriptor, path, mode="build")
    with pytest.raises(FileNotFoundError):
        HDF5StructureDataset(descriptor, path, mode="load")
    with pytest.raises(ConfigError, match="mode must be"):
        HDF5StructureDataset(descriptor, path, sources=cells, mode="rebuild")
    built = HDF5StructureDataset(descriptor, path, sources=cells[:10], mode="build")
    with pytest.raises(RuntimeError, match="build_database"):
        len(built)
    built.build_database(persist_features=True)
    assert len(built) == 10  # usable right after the build
    with pytest.raises(ConfigError, match="compression"):
        HDF5StructureDataset(descriptor, path, mode="load", compression="lzf")
    auto = HDF5StructureDataset(descriptor, path, sources=cells[:10], mode="auto")
    assert not auto.needs_build
    assert auto.build_database(persist_features=True) is None  # current: kept
    stale = HDF5StructureDataset(descriptor, path, sources=cells[:12], mode="auto")
    assert stale.needs_build
    result = stale.build_database(persist_features=True, persist_force_derivatives=True)
    assert result.n_structures == 12 and len(stale) == 12 and stale.has_persisted_derivatives
    with pytest.raises(ConfigError, match="read-only"):
        HDF5StructureDataset(descriptor, path, mode="load").build_database()
    with HDF5StructureDataset(None, path, mode="load", in_memory_cache_size=0) as ds:
        assert ds[11]["name"] == cells[11].name


def test_hdf5_from_tar_archive_with_two_build_workers(tmp_path, descriptor, cells):
    import io
    import tarfile

    from nnpflow.io.xsf import write_xsf
    from nnpflow.sources import TarArchiveXSFSourceCollection
    archive = tmp_path / "train.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        for i, s in enumerate(cells[:9]):
            buf = io.StringIO()
            write_xsf(buf, [s])
            data = buf.getvalue().encode()
            info = tarfile.TarInfo(f"m{i}.xsf")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = HDF5StructureDataset(descriptor, tmp_path / "tar.h5",
                              sources=TarArchiveXSFSourceCollection(archive), mode="build",
                              compression="zlib", compression_level=5)
    ds.build_database(build_workers=2, persist_features=True, persist_force_derivatives=True)
    assert len(ds) == 9 and sorted(ds[i]["name"].rsplit(":", 1)[1] for i in range(9)) == \
        sorted(f"m{i}.xsf" for i in range(9))
    assert DatabaseReader(tmp_path / "tar.h5").layout["compression"] == "gzip"


def test_runtime_cache_precedence(tmp_path, descriptor, cells, persisted):
    ds = HDF5StructureDataset(descriptor, persisted, mode="load")
    caches = configure_runtime_caches(ds, cache_features=True, cache_feature_max_entries=4)
    first = ds[(5, False)]["features"]
    assert 5 in caches.features
    sentinel = torch.full_like(first, 7.0)
    caches.features.put(5, sentinel)
    assert torch.equal(ds[(5, False)]["features"], sentinel)  # runtime cache wins
    for i in range(10):
        ds[(i, False)]
    assert len(caches.features) == 4  # bounded
    configure_runtime_caches(ds)  # off again
    torch.testing.assert_close(ds[(5, False)]["features"], first)
    # raw database: on-the-fly force payloads cached when asked
    raw = HDF5StructureDataset(descriptor, write_database(tmp_path / "raw.h5", cells), mode="load")
    caches = configure_runtime_caches(Subset(raw, [1, 2]), cache_force_triplets=True)
    a = raw[1]["derivatives"]
    assert raw[1]["derivatives"] is a and 1 in caches.force_payloads
    with pytest.raises(ValueError, match="disabled"):
        configure_runtime_caches(raw, cache_feature_max_entries=10)


def _loader_epoch(dataset, **kwargs):
    loader = DataLoader(dataset, batch_size=4, shuffle=False, collate_fn=collate_samples,
                        **kwargs)
    return loader, list(loader)


def _digest(batches):
    out = []
    for b in batches:
        g = torch.ones_like(b.features, dtype=torch.float64)
        f = (b.derivatives.forces(g[b.force_atom_index]) if b.derivatives is not None
             else torch.zeros(0, 3))
        out.append((b.names, b.features.clone(), b.energy.clone(), b.use_forces.clone(), f))
    return out


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x[0] == y[0]
        for u, v in zip(x[1:], y[1:]):
            assert torch.equal(u, v)


def test_dataloader_workers_give_identical_batches(descriptor, persisted):
    ds = HDF5StructureDataset(descriptor, persisted, mode="load", in_memory_cache_size=8)
    ds[0]  # the parent's handle is open before the workers fork
    reference = _digest(_loader_epoch(ds, num_workers=0)[1])
    for workers in (1, 2):
        _same(_digest(_loader_epoch(ds, num_workers=workers)[1]), reference)
    train = Subset(ds, list(range(3, 27)))
    ref_train = _digest(_loader_epoch(train, num_workers=0)[1])
    loader, first = _loader_epoch(train, num_workers=2, persistent_workers=True)
    _same(_digest(first), ref_train)
    _same(_digest(list(loader)), ref_train)  # second epoch, same workers
    ds.set_force_selection(False)  # seen by the persistent workers through shared memory
    energy_only = _digest(list(loader))
    assert all(not u.any() for _, _, _, u, _ in energy_only)
    ds.set_force_selection(None)
    _same(_digest(list(loader)), ref_train)
    for _ in range(3):  # repeated open/close
        ds.close()
        _same(_digest(_loader_epoch(ds, num_workers=0)[1]), reference)
    ds.close()


def _assert_batches_equal(a: Batch, b: Batch) -> None:
    assert a.names == b.names
    for name in ("features", "species_index", "atom_structure", "n_atoms", "energy",
                 "has_energy", "reference_energy", "forces", "has_forces", "use_forces",
                 "force_mask", "force_atom_index", "positions", "index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.derivatives is None) == (b.derivatives is None)
    if a.derivatives is not None:
        g = torch.ones(int(a.force_mask.sum()), a.features.shape[1], dtype=torch.float64)
        assert torch.equal(a.derivatives.forces(g), b.derivatives.forces(g))


def test_batch_loader_equals_collated_samples(descriptor, persisted, cells):
    from nnpflow.datasets import batch_loader
    ds = HDF5StructureDataset(None, persisted, mode="load", in_memory_cache_size=16)
    train = Subset(ds, list(range(2, 28)))
    for selection in (False, None):
        ds.set_force_selection(selection)
        batches = list(batch_loader(train, 5, shuffle=True, seed=3))
        assert sorted(i for b in batches for i in b.index.tolist()) == list(range(2, 28))
        for b in batches:
            _assert_batches_equal(b, collate_samples(ds.samples(b.index.tolist())))
        with_workers = list(batch_loader(train, 5, shuffle=True, seed=3, num_workers=2))
        for a, b in zip(with_workers, batches):
            _assert_batches_equal(a, b)
    cached = CachedStructureDataset(cells, descriptor)
    for b in batch_loader(cached, 7):
        _assert_batches_equal(b, collate_samples(cached.samples(b.index.tolist())))


def test_vectorised_batches_equal_collated_samples_bit_for_bit(descriptor, persisted, cells):
    """get_batch slices the decoded blocks and builds one DescriptorDerivatives for
    the force views; it equals collating the per-structure samples exactly, for
    mixed views, explicit views, a filtered database and float64."""
    energies = np.array([s.energy / len(s) for s in cells])
    cut = float(np.median(energies))
    for kwargs in ({}, {"dtype": torch.float64}, {"max_energy": cut}):
        ds = HDF5StructureDataset(None, persisted, mode="load", **kwargs)
        if "max_energy" in kwargs:
            assert ds._db_index is not None and len(ds) < len(cells)
        n = len(ds)
        idx = [n - 1, 3, 0, 7, 5, 2, n - 2]
        mask = np.zeros(n, dtype=bool)
        mask[[3, 7, n - 1]] = True
        ds.set_force_selection(mask)
        for view in (None, True, False):
            a = ds.get_batch(idx, view)
            b = collate_samples(ds.samples(idx, view))
            _assert_batches_equal(a, b)
            assert a.features.dtype == ds.dtype
            if a.derivatives is not None:
                for name in ("species_index", "center", "neighbor", "vector"):
                    assert torch.equal(getattr(a.derivatives, name),
                                       getattr(b.derivatives, name)), name
                assert a.derivatives.atom_counts == b.derivatives.atom_counts
            for t, group in enumerate(a.species_groups):
                assert torch.equal(group, torch.nonzero(a.species_index == t).squeeze(1))
        ds.close()


def test_batch_species_groups_follow_to_and_pin_memory(descriptor, persisted):
    ds = HDF5StructureDataset(descriptor, persisted, mode="load")
    batch = ds.get_batch([4, 1, 2])
    moved = batch.to("cpu", dtype=torch.float64)
    assert moved.features.dtype == torch.float64
    assert all(torch.equal(x, y) for x, y in zip(moved.species_groups, batch.species_groups))
    assert collate_samples(ds.samples([4, 1, 2])).species_groups is None
    ds.close()


def test_reader_locate_matches_block_of(tmp_path, descriptor, cells):
    from nnpflow.database import merge_databases
    parts = []
    for k, chunk in enumerate((cells[:7], cells[7:20], cells[20:])):
        parts.append(write_database(tmp_path / f"p{k}.h5", chunk, descriptor=descriptor,
                                    persist_features=True, block_structures=4))
    merged = merge_databases(parts, tmp_path / "merged.h5")
    with DatabaseReader(merged) as reader:
        idx = np.array([0, 29, 6, 7, 8, 19, 20, 3, -1, -30])
        blocks, pos = reader.locate(idx)
        assert [(int(b), int(j)) for b, j in zip(blocks, pos)] == [reader.block_of(int(i))
                                                                     for i in idx]
        with pytest.raises(IndexError):
            reader.locate([30])


def test_corrupt_stored_edges_are_refused_naming_the_structure(tmp_path, descriptor, cells):
    import h5py

    from nnpflow.errors import SchemaError
    path = tmp_path / "bad.h5"
    write_database(path, cells[:6], descriptor=descriptor, persist_features=True,
                   persist_force_derivatives=True)
    with DatabaseReader(path) as reader:
        assert reader.derivative_arrays(2) is not None   # decodes and validates
        n_first = len(reader.derivative_arrays(1)["edge_neighbor"])
    with h5py.File(path, "r+") as h5:
        ds = h5["parts/0/derivatives/edge_neighbor"]
        ds[n_first + 1] = 99          # an edge of structure 2 (0 has no forces, 1 comes first)
    with DatabaseReader(path) as reader:
        with pytest.raises(SchemaError, match=r"structure 2: derivative edge indices outside"):
            reader.derivative_arrays(2)
