"""ANN potentials: activations, architectures, the analytic force path against finite
differences, training behaviour (energy-only and forces), force subsets, caches,
input precedence, prediction on datasets, evaluation and committees."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from nnpflow.datasets import (CachedStructureDataset, HDF5StructureDataset, StructureDataset,
                              train_test_split)
from nnpflow.errors import ConfigError, DescriptorMismatchError
from nnpflow.models.activations import ACTIVATIONS, activation
from nnpflow.models.ann import AtomicNetworks, parse_architecture
from nnpflow.training.ann_loss import batch_errors
from nnpflow.training.committee import ANNCommittee
from nnpflow.training.config import Adam, TorchTrainingConfig
from nnpflow.training.force_sampling import force_count, force_subset
from nnpflow.training.normalization import EnergyNormalization, energy_normalization
from nnpflow.training.potential import TorchANNPotential

from test_ann_data import ARCH, emt_cells, small_descriptor


@pytest.fixture(scope="module")
def cells():
    return emt_cells(24, seed=5, no_forces_every=4, cluster_every=6)


def random_potential(descriptor, seed: int = 0) -> TorchANNPotential:
    """A potential with random weights and non-trivial normalisation (float64)."""
    pot = TorchANNPotential(ARCH, descriptor)
    gen = torch.Generator().manual_seed(seed)
    pot.net.init_weights(gen)
    with torch.no_grad():
        pot.net.feature_mean.uniform_(-0.5, 0.5, generator=gen)
        pot.net.feature_std.uniform_(0.5, 2.0, generator=gen)
    pot.energy_normalization = EnergyNormalization(shift=-0.3, scale=0.7)
    pot.atomic_energies = {"Cu": -1.5, "Au": -2.5}
    return pot


# -------------------------------------------------------------- networks
def test_activations_follow_their_definitions():
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    expected = {
        "linear": x, "tanh": torch.tanh(x), "sigmoid": 1 / (1 + torch.exp(-x)),
        "mtanh": 1.7159 * torch.tanh(2 * x / 3),
        "twist": 1.7159 * torch.tanh(2 * x / 3) + 0.1 * x,
        "relu": torch.clamp(x, min=0), "silu": x / (1 + torch.exp(-x)),
        "softplus": torch.log1p(torch.exp(x)),
        "gelu": 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    }
    assert set(expected) == set(ACTIVATIONS)
    for name, want in expected.items():
        assert torch.allclose(activation(name)(x), want, atol=1e-12), name
    # aenet's scaled tanh maps +-1 to +-1 (to 4 digits)
    assert abs(float(activation("mtanh")(torch.tensor(1.0))) - 1.0) < 1e-4
    with pytest.raises(ConfigError, match="unknown activation 'swish2'"):
        activation("swish2")


@pytest.mark.parametrize("arch, message", [
    ({"Cu": [(4, "tanh")]}, "no network for species Au"),
    ({"Cu": [], "Au": [], "Pt": []}, "species Pt not in the descriptor"),
    ({"Cu": [(0, "tanh")], "Au": []}, r"\['Cu'\]\[0\]: number of nodes"),
    ({"Cu": [(4, "tahn")], "Au": []}, "unknown activation 'tahn'"),
    ({"Cu": [4], "Au": []}, r"expected \(n_nodes, activation\)"),
    ([(4, "tanh")], "expected a mapping"),
])
def test_architecture_errors_name_the_problem(arch, message):
    with pytest.raises(ConfigError, match=message):
        parse_architecture(arch, ["Cu", "Au"])


def test_networks_are_per_species_and_normalise_features():
    net = AtomicNetworks(["Cu", "Au"], 3, {"Cu": [(4, "tanh")], "Au": []})
    net.init_weights(torch.Generator().manual_seed(1))
    net.set_feature_statistics({"Cu": {"count": 5, "mean": [1.0, 2.0, 3.0],
                                       "std": [2.0, 0.0, 1.0]},
                                "Au": {"count": 0, "mean": [9, 9, 9], "std": [9, 9, 9]}})
    assert net.feature_std[0, 1] == pytest.approx(1e-6)          # zero std floored
    assert torch.equal(net.feature_mean[1], torch.zeros(3))       # no atoms: untouched
    x = torch.randn(6, 3, dtype=torch.float64)
    species = torch.tensor([0, 1, 0, 1, 1, 0])
    out = net(x, species)
    cu = net.nets[0]((x[species == 0] - net.feature_mean[0]) / net.feature_std[0]).squeeze(1)
    au = net.nets[1](x[species == 1]).squeeze(1)                  # linear: no hidden layer
    assert torch.allclose(out[species == 0], cu) and torch.allclose(out[species == 1], au)


# ------------------------------------------------------------- force path
def test_analytic_forces_equal_finite_differences_of_the_energy(cells):
    """forces = derivatives.forces(dE/dG) equals -dE/dR of the model energy
    (central differences of predictions on displaced positions), for periodic
    cells and isolated clusters; the training path (normalised units) agrees."""
    descriptor = small_descriptor()
    pot = random_potential(descriptor)
    for s in (cells[0], cells[5]):   # a periodic cell and a cluster
        assert (s.cell is None) == (s is cells[5])
        analytic = pot.predict([s]).forces[0]
        h = 1e-5
        numeric = np.zeros_like(analytic)
        for i in range(s.n_atoms):
            for a in range(3):
                e = []
                for sign in (1, -1):
                    pos = s.positions.copy()
                    pos[i, a] += sign * h
                    e.append(pot.predict([s.copy(positions=pos)], eval_forces=False).energies[0])
                numeric[i, a] = -(e[0] - e[1]) / (2 * h)
        assert np.abs(analytic).max() > 0.05
        np.testing.assert_allclose(analytic, numeric, atol=2e-7 * max(1, np.abs(numeric).max()))
    # the training loss sees the same forces in normalised units (F / scale)
    ds = StructureDataset(cells[:4], descriptor, dtype=torch.float64)
    batch = ds.get_batch(range(4))
    err = batch_errors(pot.net, batch, pot.energy_normalization, torch.device("cpu"),
                       torch.float64, with_forces=True, create_graph=False)
    predicted = pot.predict([cells[i] for i in range(4) if cells[i].forces is not None])
    np.testing.assert_allclose(err.forces_pred.numpy() * pot.energy_normalization.scale,
                               np.concatenate(predicted.forces), atol=1e-10)


def test_energy_is_a_sum_of_atomic_energies_with_references(cells):
    pot = random_potential(small_descriptor())
    s = cells[0]
    feats = pot.descriptor.featurize(s)
    species = torch.tensor([pot.descriptor.species_to_idx[x] for x in s.species])
    with torch.no_grad():
        eps = pot.net(feats, species)
    norm = pot.energy_normalization
    expected = float((norm.scale * eps + norm.shift).sum()) + sum(
        pot.atomic_energies[x] for x in s.species)
    assert pot.predict([s], eval_forces=False).energies[0] == pytest.approx(expected, abs=1e-10)
    # translation and permutation invariance
    moved = s.copy(positions=s.positions + np.array([0.3, -1.2, 2.0]))
    perm = np.random.default_rng(0).permutation(s.n_atoms)
    permuted = s.copy(positions=s.positions[perm], species=[s.species[k] for k in perm],
                      forces=s.forces[perm])
    r = pot.predict([s, moved, permuted])
    assert r.energies[1] == pytest.approx(r.energies[0], abs=1e-9)
    assert r.energies[2] == pytest.approx(r.energies[0], abs=1e-9)
    np.testing.assert_allclose(r.forces[2], r.forces[0][perm], atol=1e-9)


# -------------------------------------------------------------- training
def quick_config(**changes) -> TorchTrainingConfig:
    kw = dict(iterations=25, method=Adam(mu=0.01, batchsize=6), testpercent=25, seed=3,
              device="cpu", precision="float64")
    kw.update(changes)
    return TorchTrainingConfig(**kw)


def test_energy_only_training_reduces_the_error(cells):
    descriptor = small_descriptor()
    pot = TorchANNPotential(ARCH, descriptor)
    history = pot.train(structures=cells, config=quick_config(cache_features=True))
    assert pot.training_info["data"]["training"]["type"] == "CachedStructureDataset"
    assert len(history) == 25
    first, last = history[0], history[-1]
    assert last["train_energy_rmse"] < 0.5 * first["train_energy_rmse"]
    assert last["val_energy_rmse"] < first["val_energy_rmse"]
    assert first["train_force_rmse"] is None and first["force_structures"] == 0
    assert pot.evaluate(cells)["energy_rmse_per_atom"] < 0.05


def test_force_training_reduces_the_force_error(cells):
    descriptor = small_descriptor()
    pot = TorchANNPotential(ARCH, descriptor)
    before = TorchANNPotential(ARCH, descriptor)
    before.net.init_weights(torch.Generator().manual_seed(3))
    history = pot.train(structures=cells, config=quick_config(force_weight=0.5))
    assert pot.training_info["data"]["training"]["type"] == "StructureDataset"
    assert history[-1]["train_force_rmse"] < 0.6 * history[0]["train_force_rmse"]
    assert history[-1]["val_force_rmse"] < history[0]["val_force_rmse"]
    metrics = pot.evaluate(cells)
    assert metrics["n_structures_with_forces"] == sum(s.forces is not None for s in cells)
    assert set(metrics["per_species"]) == {"Cu", "Au"}
    assert metrics["force_rmse"] < history[0]["train_force_rmse"]


def test_force_subsets_follow_fraction_and_sampling(cells):
    candidates = np.arange(3, 43, 2)                        # 20 force structures
    assert force_count(20, 0.3) == 6 and force_count(20, 0.01) == 1 and force_count(0, 0.5) == 0
    r0 = force_subset(candidates, 0.3, "random", 7, 0)
    r1 = force_subset(candidates, 0.3, "random", 7, 1)
    assert len(r0) == 6 and set(r0) <= set(candidates) and not np.array_equal(r0, r1)
    assert np.array_equal(r0, force_subset(candidates, 0.3, "random", 7, 0))  # seeded
    f0 = force_subset(candidates, 0.3, "fixed", 7, 0)
    assert all(np.array_equal(f0, force_subset(candidates, 0.3, "fixed", 7, e))
               for e in range(1, 5))
    assert np.array_equal(force_subset(candidates, 1.0, "random", 7, 3), candidates)
    # the trainer applies exactly these subsets as the dataset's force selection
    descriptor = small_descriptor()
    ds = StructureDataset(cells, descriptor, dtype=torch.float64)
    train, val = train_test_split(ds, 0.25, seed=1)
    train_idx = np.asarray(train.indices)
    with_forces = train_idx[ds.has_forces()[train_idx]]
    for sampling in ("random", "fixed"):
        seen = {}

        def record(epoch, step, seen=seen):
            seen.setdefault(epoch, np.flatnonzero(ds.force_selection))

        pot = TorchANNPotential(ARCH, descriptor)
        history = pot.train(train_dataset=train, test_dataset=val, on_step=record,
                            config=quick_config(iterations=3, force_weight=0.3,
                                                force_fraction=0.5, force_sampling=sampling,
                                                testpercent=0))
        for epoch in range(3):
            want = force_subset(with_forces, 0.5, sampling, 3, epoch)
            assert np.array_equal(seen[epoch], want)
            assert history[epoch]["force_structures"] == len(want) == round(0.5 * len(with_forces))
        if sampling == "fixed":
            assert np.array_equal(seen[0], seen[2])
        else:
            assert not np.array_equal(seen[0], seen[1])


def test_runtime_caches_give_identical_training(cells):
    descriptor = small_descriptor()
    results = []
    for caches in ({}, {"cache_features": True, "cache_force_triplets": True,
                        "cache_warmup": True},
                   {"cache_features": True, "cache_feature_max_entries": 3,
                    "cache_force_triplets": True, "cache_force_triplet_max_entries": 2}):
        pot = TorchANNPotential(ARCH, descriptor)
        ds = StructureDataset(cells, descriptor, dtype=torch.float64)
        history = pot.train(dataset=ds, config=quick_config(
            iterations=4, force_weight=0.3, force_fraction=0.5, **caches))
        results.append((pot.net.state_dict(), history))
    for state, history in results[1:]:
        for k, v in results[0][0].items():
            assert torch.equal(v, state[k]), k
        assert [r["train_loss"] for r in history] == [r["train_loss"] for r in results[0][1]]


def test_input_precedence_splits_and_filters(cells, tmp_path):
    descriptor = small_descriptor()
    cfg = quick_config(iterations=1, testpercent=25, split_seed=11)
    pot = TorchANNPotential(ARCH, descriptor)
    ds = StructureDataset(cells, descriptor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pot.train(dataset=ds, config=cfg)
    info = pot.training_info
    assert (info["n_train"], info["n_validation"]) == (18, 6)
    # same split as train_test_split with split_seed
    _, val = train_test_split(ds, 0.25, seed=11)
    from nnpflow.training.ann_trainer import dataset_identity
    assert info["data"]["validation"] == dataset_identity(val)
    # prebuilt datasets own their filtering: max_energy/atomic_energies warned and ignored
    with pytest.warns(UserWarning, match="max_energy and atomic_energies only apply"):
        pot.train(dataset=ds, config=cfg.replace(max_energy=-1.0, atomic_energies={"Cu": 0.0,
                                                                                   "Au": 0.0}))
    assert pot.training_info["n_train"] + pot.training_info["n_validation"] == len(cells)
    # raw structures: max_energy filters (referenced energy per atom)
    e = np.array([s.energy / s.n_atoms for s in cells])
    cut = float(np.median(e))
    pot.train(structures=cells, config=cfg.replace(max_energy=cut))
    assert pot.training_info["n_train"] + pot.training_info["n_validation"] == int((e <= cut).sum())
    # an explicit split wins over dataset and structures
    train, val = train_test_split(ds, 0.5, seed=2)
    with pytest.warns(UserWarning, match="train_dataset takes precedence"):
        pot.train(structures=cells, train_dataset=train, test_dataset=val, config=cfg)
    assert (pot.training_info["n_train"], pot.training_info["n_validation"]) == (12, 12)
    with pytest.raises(ConfigError, match="needs structures, dataset or train_dataset"):
        pot.train(config=cfg)
    with pytest.raises(ConfigError, match="energy-only"):
        pot.train(dataset=CachedStructureDataset(cells, descriptor),
                  config=cfg.replace(force_weight=0.2))
    other = small_descriptor().to(dtype=torch.float64)
    other = type(other)(["Cu", "Au"], 3, 4.5, 2, 3.5)
    with pytest.raises(DescriptorMismatchError):
        pot.train(dataset=StructureDataset(cells[:4], other), config=cfg)


def test_predict_dataset_reuses_persisted_features(cells, tmp_path):
    descriptor = small_descriptor()
    pot = random_potential(descriptor)
    path = tmp_path / "db.h5"
    ds = HDF5StructureDataset(descriptor, path, sources=cells, mode="build")
    ds.build_database(persist_features=True, persist_force_derivatives=True)
    loaded = HDF5StructureDataset(None, path, mode="load")
    sub = torch.utils.data.Subset(loaded, [1, 3, 4, 5, 9])
    a = pot.predict_dataset(sub)
    b = pot.predict([cells[i] for i in sub.indices])
    # persisted features and derivatives are float32: agreement to float32 precision
    np.testing.assert_allclose(a.energies, b.energies, rtol=1e-6, atol=1e-5)
    for fa, fb in zip(a.forces, b.forces):   # index 3 has no reference forces: on the fly
        np.testing.assert_allclose(fa, fb, atol=2e-5)
    assert a.names == b.names and a.reference_forces[1] is None
    m = pot.evaluate(sub)
    assert m["n_structures"] == 5 and m["n_structures_with_forces"] == 4
    expected = np.sqrt(np.mean(((a.energies - a.reference_energies) / a.n_atoms) ** 2))
    assert m["energy_rmse_per_atom"] == pytest.approx(expected)
    energy_only = pot.predict_dataset(sub, eval_forces=False)
    assert energy_only.forces is None
    np.testing.assert_allclose(energy_only.energies, a.energies, rtol=1e-12)
    loaded.close()


def test_energy_normalisation_uses_the_training_split_only(cells):
    descriptor = small_descriptor()
    ds = StructureDataset(cells, descriptor, atomic_energies={"Cu": -0.5, "Au": -0.25})
    train, _ = train_test_split(ds, 0.5, seed=0)
    e = np.array([(cells[i].energy - sum({"Cu": -0.5, "Au": -0.25}[x] for x in cells[i].species))
                  / cells[i].n_atoms for i in train.indices])
    norm = energy_normalization(train)
    assert norm.shift == pytest.approx(e.mean()) and norm.scale == pytest.approx(e.std())
    pot = TorchANNPotential(ARCH, descriptor)
    pot.train(train_dataset=train, config=quick_config(iterations=1, testpercent=0))
    assert pot.energy_normalization == norm
    assert pot.atomic_energies == {"Cu": -0.5, "Au": -0.25}
    from nnpflow.datasets import feature_statistics
    stats = feature_statistics(train)
    assert torch.allclose(pot.net.feature_mean[0], torch.as_tensor(stats["Cu"]["mean"]))


# ------------------------------------------------------------- committees
def test_committee_members_share_the_split_and_report_spread(cells):
    descriptor = small_descriptor()
    committee = ANNCommittee.train(ARCH, descriptor, 3, structures=cells,
                                   config=quick_config(iterations=3, force_weight=0.2))
    infos = [m.training_info for m in committee.members]
    assert len({str(i["data"]) for i in infos}) == 1            # one shared split
    assert [i["config"]["seed"] for i in infos] == [3, 4, 5]
    w = [m.net.nets[0][0].weight for m in committee.members]
    assert not torch.equal(w[0], w[1])
    result = committee.predict(cells[:5])
    members = [m.predict(cells[:5]) for m in committee.members]
    e = np.stack([r.energies for r in members])
    np.testing.assert_allclose(result.energies, e.mean(0), rtol=1e-12)
    np.testing.assert_allclose(result.energy_std, e.std(0), rtol=1e-12)
    assert np.all(result.energy_std > 0)
    f = np.stack([r.forces[2] for r in members])
    np.testing.assert_allclose(result.forces_std[2], f.std(0), rtol=1e-12)
    metrics = committee.evaluate(cells[:5])
    assert metrics["energy_std_mean"] > 0 and metrics["force_std_mean"] > 0


def test_dataloader_workers_give_identical_training(cells, tmp_path):
    """Batches assembled by a persistent worker process (which sees each epoch's
    force selection through shared memory) train exactly as in one process."""
    descriptor = small_descriptor()
    path = tmp_path / "db.h5"
    build = HDF5StructureDataset(descriptor, path, sources=cells, mode="build")
    build.build_database(persist_features=True, persist_force_derivatives=True)
    build.close()
    states = []
    for workers in ({}, {"num_workers": 1, "persistent_workers": True}):
        ds = HDF5StructureDataset(None, path, mode="load", dtype=torch.float64)
        pot = TorchANNPotential(ARCH, ds.descriptor)
        before = ds.force_selection
        pot.train(dataset=ds, config=quick_config(iterations=3, force_weight=0.3,
                                                  force_fraction=0.5, **workers))
        assert np.array_equal(ds.force_selection, before)       # left as given
        states.append((pot.net.state_dict(), pot.history))
        ds.close()
    for k, v in states[0][0].items():
        assert torch.equal(v, states[1][0][k]), k
    assert [r["force_structures"] for r in states[0][1]] == [r["force_structures"]
                                                             for r in states[1][1]]


def test_networks_with_precomputed_species_groups_are_identical():
    net = AtomicNetworks(["Cu", "Au"], 3, {"Cu": [(4, "tanh")], "Au": [(3, "sigmoid")]})
    net.init_weights(torch.Generator().manual_seed(4))
    x = torch.randn(7, 3, dtype=torch.float64)
    species = torch.tensor([1, 0, 0, 1, 1, 0, 1])
    groups = [torch.nonzero(species == t).squeeze(1) for t in range(2)]
    assert torch.equal(net(x, species, groups), net(x, species))
    inputs = [net.normalize(x, t, g) for t, g in enumerate(groups)]
    assert torch.equal(net.forward_normalized(inputs, groups, 7), net(x, species))
    with pytest.raises(ValueError, match="species groups"):
        net(x, species, groups[:1])


def test_energy_table_trains_bit_identically_to_dataset_batches(cells, tmp_path, monkeypatch):
    """Energy-only training from persisted features gathers each step's inputs
    from a per-species table of normalised features; the weights and losses
    equal those of training on the dataset's batches exactly."""
    import nnpflow.training.ann_trainer as ann_trainer
    descriptor = small_descriptor()
    path = tmp_path / "db.h5"
    build = HDF5StructureDataset(descriptor, path, sources=cells, mode="build")
    build.build_database(persist_features=True)
    build.close()
    runs = []
    for table in (True, False):
        if not table:
            monkeypatch.setattr(ann_trainer.EnergyTable, "usable",
                                staticmethod(lambda *args: False))
        for precision in ("float32", "float64"):
            ds = HDF5StructureDataset(None, path, mode="load")
            pot = TorchANNPotential(ARCH, ds.descriptor)
            used = []
            original = ann_trainer.EnergyTable.batch
            monkeypatch.setattr(ann_trainer.EnergyTable, "batch",
                                lambda self, idx: used.append(1) or original(self, idx))
            pot.train(dataset=ds, config=quick_config(iterations=4, precision=precision))
            monkeypatch.setattr(ann_trainer.EnergyTable, "batch", original)
            assert bool(used) == table
            runs.append((pot.net.state_dict(), pot.history))
            ds.close()
    for (state_a, hist_a), (state_b, hist_b) in zip(runs[:2], runs[2:]):
        for k, v in state_a.items():
            assert torch.equal(v, state_b[k]), k
        assert [r["train_loss"] for r in hist_a] == [r["train_loss"] for r in hist_b]
        assert [r["val_loss"] for r in hist_a] == [r["val_loss"] for r in hist_b]


def test_energy_table_only_for_in_memory_persisted_features(cells, tmp_path):
    from nnpflow.datasets import configure_runtime_caches
    from nnpflow.training.ann_trainer import EnergyTable
    descriptor = small_descriptor()
    path = tmp_path / "db.h5"
    build = HDF5StructureDataset(descriptor, path, sources=cells, mode="build")
    build.build_database(persist_features=True)
    build.close()
    idx = np.arange(10)
    cfg = quick_config()
    ds = HDF5StructureDataset(None, path, mode="load")
    assert EnergyTable.usable(ds, idx, cfg)
    assert not EnergyTable.usable(ds, idx, cfg.replace(num_workers=1))
    assert not EnergyTable.usable(ds, np.array([1, 1, 2]), cfg)          # repeated structures
    assert not EnergyTable.usable(HDF5StructureDataset(None, path, mode="load",
                                                       in_memory_cache_size=5), idx, cfg)
    configure_runtime_caches(ds, cache_features=True)                    # runtime cache first
    assert not EnergyTable.usable(ds, idx, cfg)
    assert not EnergyTable.usable(StructureDataset(cells, descriptor), idx, cfg)
    raw = tmp_path / "raw.h5"
    HDF5StructureDataset(descriptor, raw, sources=cells, mode="build").build_database()
    assert not EnergyTable.usable(HDF5StructureDataset(None, raw, mode="load"), idx, cfg)
