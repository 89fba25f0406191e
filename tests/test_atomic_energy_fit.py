"""Fitted atomic reference energies (``atomic_energies: fit`` / ``atomic_energies="fit"``).

Synthetic energies built from known per-species references must give those
references back; the fit uses the training part only (a wild test-part energy
does not move it); the API trainer and the workflow's split and train stages
apply the fit and store it in the model file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnpflow.energy_reference import fit_atomic_energies
from nnpflow.errors import ConfigError
from nnpflow.io.manifest import write_manifest
from nnpflow.splitting import load_split
from nnpflow.stages import split as split_stage

from test_ann_data import emt_cells, small_descriptor

KNOWN = {"Li": -1.91, "O": -4.93, "Mn": -5.16, "Ni": -1.89}


def synthetic(n=200, seed=0, noise=0.01):
    """Mixed compositions (1-12 atoms of each of 1-4 species) with total energies
    sum n_s e_s + N * (a small per-atom term, std ``noise`` eV/atom)."""
    rng = np.random.default_rng(seed)
    species = list(KNOWN)
    comp = rng.integers(0, 13, size=(n, len(species)))
    comp[comp.sum(axis=1) == 0, 0] = 1
    e = comp @ np.array([KNOWN[s] for s in species]) + \
        comp.sum(axis=1) * rng.normal(scale=noise, size=n)
    return comp, e, species


def test_fit_recovers_known_references():
    comp, e, species = synthetic()
    fit = fit_atomic_energies(comp, e, species)
    assert fit["n_structures"] == 200 and fit["rank"] == 4
    for s in species:
        assert fit["atomic_energies"][s] == pytest.approx(KNOWN[s], abs=0.02), s
    assert fit["rmse_per_atom"] == pytest.approx(0.01, rel=0.25)
    # exact data: exact references
    exact = fit_atomic_energies(comp, comp @ np.array([KNOWN[s] for s in species]), species)
    for s in species:
        assert exact["atomic_energies"][s] == pytest.approx(KNOWN[s], abs=1e-10)
    assert exact["rmse_per_atom"] < 1e-12
    # structures without an energy are left out
    e2 = e.copy()
    e2[:50] = np.nan
    assert fit_atomic_energies(comp, e2, species)["n_structures"] == 150


def test_fit_degenerate_and_impossible_cases():
    # one stoichiometry (LiO2-like cells of several sizes): only the combination is known
    comp = np.array([[1, 2], [2, 4], [3, 6]])
    e = comp @ np.array([-1.0, -2.0])
    fit = fit_atomic_energies(comp, e, ["Li", "O"])
    assert fit["rank"] == 1
    ref = fit["atomic_energies"]
    assert ref["Li"] + 2 * ref["O"] == pytest.approx(-5.0)      # what the data determine
    with pytest.raises(ConfigError, match="cannot determine the reference of O"):
        fit_atomic_energies([[1, 0], [2, 0]], [-1.0, -2.0], ["Li", "O"])
    with pytest.raises(ConfigError, match="needs training structures with energies"):
        fit_atomic_energies([[1, 0]], [np.nan], ["Li", "O"])


def _manifest(tmp_path, comp, e, species, wild=None):
    rows = []
    for i, (c, energy) in enumerate(zip(comp, e)):
        counts = {s: int(k) for s, k in zip(species, c) if k}
        rows.append({"label": f"d/s{i}.xsf", "unit": f"d/s{i}.xsf", "frame": "",
                     "n_atoms": str(sum(counts.values())),
                     "species": " ".join(f"{s}:{counts[s]}" for s in sorted(counts)),
                     "energy": repr(float(energy)), "has_forces": "false",
                     "content_hash": f"{i:064x}"})
    write_manifest(tmp_path / "manifest.tsv", rows)
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"n_structures": len(rows), "structures_fingerprint": "ab" * 32}))


def test_split_stage_fits_on_the_training_part_only(tmp_path):
    comp, e, species = synthetic(n=120, seed=4)
    e = e.copy()
    # a first pass to find the test structures, whose energies are then made absurd
    _manifest(tmp_path, comp, e, species)
    out = tmp_path / "split.json"
    split_stage.run(str(tmp_path / "manifest.json"), str(out), manifest=str(tmp_path / "manifest.tsv"),
                    validation=0.1, test=0.2, seed=1)
    first = load_split(out)
    assert first.atomic_energies_fit is None
    e[first.test] += 1000.0 * comp[first.test].sum(axis=1)
    e[first.validation] -= 500.0
    _manifest(tmp_path, comp, e, species)
    split_stage.run(str(tmp_path / "manifest.json"), str(out), manifest=str(tmp_path / "manifest.tsv"),
                    validation=0.1, test=0.2, seed=1, fit_atomic_energies=True)
    split = load_split(out)
    np.testing.assert_array_equal(split.test, first.test)   # content hashes unchanged
    fit = split.atomic_energies_fit
    assert fit["n_structures"] == len(split.train)
    assert sorted(fit["atomic_energies"]) == sorted(species)
    for s in species:
        assert fit["atomic_energies"][s] == pytest.approx(KNOWN[s], abs=0.05), s
    want = fit_atomic_energies(comp[split.train], e[split.train], species)
    for s in species:
        assert fit["atomic_energies"][s] == pytest.approx(want["atomic_energies"][s], abs=1e-9)


def test_api_training_with_fitted_references(tmp_path):
    """TorchTrainingConfig(atomic_energies="fit"): references fitted on the training
    part only, applied to training and validation, stored in the model file and
    added back by predictions."""
    from nnpflow.datasets import subset_indices
    from nnpflow.training.config import Adam, TorchTrainingConfig
    from nnpflow.training.potential import TorchANNPotential
    offsets = {"Cu": -3.7, "Au": -1.2}
    cells = [s.copy(energy=s.energy + sum(offsets[x] for x in s.species))
             for s in emt_cells(24, seed=5)]
    cfg = TorchTrainingConfig(iterations=3, method=Adam(mu=0.01, batchsize=6), testpercent=25,
                              seed=3, device="cpu", precision="float64", atomic_energies="fit")
    pot = TorchANNPotential({"Cu": [(4, "tanh")], "Au": [(4, "tanh")]}, small_descriptor())
    pot.train(cells, config=cfg)
    fit = pot.atomic_energies_fit
    assert fit["method"] == "least squares on the training part"
    assert fit["n_structures"] == 18                       # 75 % of 24
    # the same fit, by hand, on the trainer's training part (its seeded 75 %)
    from nnpflow.datasets import StructureDataset, train_test_split
    train, _ = train_test_split(StructureDataset(cells, small_descriptor()), 0.25,
                                seed=cfg.effective_split_seed)
    base, idx = subset_indices(train)
    want = fit_atomic_energies(base.compositions(["Cu", "Au"])[idx], base.energies()[idx],
                               ["Cu", "Au"])
    for s, v in offsets.items():
        assert pot.atomic_energies[s] == pytest.approx(want["atomic_energies"][s], abs=1e-9)
        assert pot.atomic_energies[s] == pytest.approx(v, abs=1.0), s   # the offsets dominate
    assert pot.atomic_energies == fit["atomic_energies"]
    path = tmp_path / "model.pt"
    pot.save(path)
    loaded = TorchANNPotential.from_file(path)
    assert loaded.atomic_energies == pot.atomic_energies
    assert loaded.atomic_energies_fit == fit
    # predictions carry the references: within the model's error of the totals
    r = loaded.predict(cells[:4], eval_forces=False)
    n = np.array([s.n_atoms for s in cells[:4]])
    err = (r.energies - np.array([s.energy for s in cells[:4]])) / n
    assert np.abs(err).max() < 0.5
    with pytest.raises(ConfigError, match="cannot be combined with max_energy"):
        TorchTrainingConfig(atomic_energies="fit", max_energy=1.0)


def test_train_stage_applies_the_split_fit(tmp_path):
    from nnpflow.database import DatabaseReader, write_database
    from nnpflow.splitting import make_stable_split, write_split
    from nnpflow.stages import train as train_stage
    from nnpflow.training.potential import TorchANNPotential
    import dataclasses
    offsets = {"Cu": -3.7, "Au": -1.2}
    cells = [s.copy(energy=s.energy + sum(offsets[x] for x in s.species))
             for s in emt_cells(16, seed=6)]
    db = tmp_path / "database.h5"
    write_database(db, cells, descriptor=small_descriptor(), persist_features=True,
                   persist_force_derivatives=True)
    with DatabaseReader(db) as reader:
        split = make_stable_split(reader.names(), reader.content_hashes(), 0.25, 0.25, 0,
                                  reader.structures_fingerprint)
        comp = reader.composition(["Cu", "Au"])
        energies = reader.energies
    fit = {"method": "least squares on the training part",
           **fit_atomic_energies(comp[split.train], energies[split.train], ["Cu", "Au"])}
    write_split(tmp_path / "split.json", dataclasses.replace(split, atomic_energies_fit=fit))
    training = {"epochs": 2, "batch_size": 4, "learning_rate": 0.01, "schedule": "constant",
                "force_weight": 0.2, "force_fraction": 1.0, "force_sampling": "random",
                "patience": 0, "ema_decay": 0.0, "device": "cpu", "devices": 1, "seed": 5}
    train_stage.run(str(db), str(tmp_path / "split.json"), str(tmp_path / "m" / "model.pt"),
                    str(tmp_path / "m" / "history.csv"), "ann",
                    {"architecture": "ann", "hidden": [[4, "tanh"]]}, training, 0)
    pot = TorchANNPotential.from_file(tmp_path / "m" / "model.pt")
    assert pot.atomic_energies == fit["atomic_energies"]
    assert pot.atomic_energies_fit == fit
    # the training targets were referenced: the energy shift is per-atom small, not ~-2.5 eV
    assert abs(pot.energy_normalization.shift) < 0.5
