"""The ASE calculator: agrees with ``predict`` (ANN) and ``predict_structures``
(SchNet layer stacks), its forces are finite differences of its own energy,
committees give mean and spread, and foreign files are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError

from nnpflow import Structure
from nnpflow.calculator import NNPCalculator
from nnpflow.errors import SchemaError
from nnpflow.training.config import Adam, TorchTrainingConfig
from nnpflow.training.potential import TorchANNPotential

from test_ann_data import ARCH, emt_cells, small_descriptor

SCHNET_LAYERS = [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
                 {"name": "RandomAtomEmbedding"},
                 {"name": "Core", "params": {"num_interactions": 1, "hidden_channels": 8}},
                 {"name": "AtomicAffine"}, {"name": "EnergyReduce"}, {"name": "Force"}]
SCHNET_BUILD = {"dim_embedding": 8, "num_rbf": 6, "max_Za": 80, "cutoff_sr": 4.0}


@pytest.fixture(scope="module")
def ann_files(tmp_path_factory):
    """Two quickly trained ANN potentials (float32 training, as by default)."""
    folder = tmp_path_factory.mktemp("calc")
    cells = emt_cells(12, seed=4)
    paths = []
    for seed in (0, 1):
        pot = TorchANNPotential(ARCH, small_descriptor())
        pot.train(structures=cells, config=TorchTrainingConfig(
            iterations=3, method=Adam(mu=0.01, batchsize=4), seed=seed, force_weight=0.2,
            testpercent=0, device="cpu"))
        path = folder / f"ann_{seed}.pt"
        pot.save(path)
        paths.append(path)
    return paths


def cu_au_atoms():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
    atoms.set_chemical_symbols(["Cu", "Au", "Au", "Cu", "Cu", "Cu", "Au", "Cu"])
    atoms.rattle(0.05, seed=3)
    return atoms


def test_calculator_agrees_with_predict(ann_files):
    atoms = cu_au_atoms()
    atoms.calc = NNPCalculator(ann_files[0])
    pot = TorchANNPotential.from_file(ann_files[0]).to(dtype=torch.float64)
    ref = pot.predict([Structure.from_ase(cu_au_atoms())])
    assert atoms.get_potential_energy() == pytest.approx(ref.energies[0], abs=1e-9)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_forces(), ref.forces[0], atol=1e-9)
    # the stored float32 precision on request
    atoms32 = cu_au_atoms()
    atoms32.calc = NNPCalculator(ann_files[0], dtype="float32")
    assert atoms32.get_potential_energy() == pytest.approx(ref.energies[0], abs=1e-4)


def test_forces_are_finite_differences_of_the_calculator_energy(ann_files):
    atoms = cu_au_atoms()
    atoms.calc = NNPCalculator(ann_files[0])
    forces = atoms.get_forces()
    h = 1e-5
    for i, a in [(0, 0), (1, 2), (5, 1), (7, 0)]:
        e = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, a] += sign * h
            moved.calc = NNPCalculator(ann_files[0])
            e.append(moved.get_potential_energy())
        assert forces[i, a] == pytest.approx(-(e[0] - e[1]) / (2 * h), abs=1e-6)
    assert np.abs(forces).max() > 1e-3


def test_committee_calculator_gives_mean_and_spread(ann_files):
    atoms = cu_au_atoms()
    calc = NNPCalculator(ann_files)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    single = []
    for path in ann_files:
        one = cu_au_atoms()
        one.calc = NNPCalculator(path)
        single.append((one.get_potential_energy(), one.get_forces()))
    e = np.array([s[0] for s in single])
    f = np.stack([s[1] for s in single])
    assert energy == pytest.approx(e.mean(), abs=1e-10)
    np.testing.assert_allclose(forces, f.mean(axis=0), atol=1e-10)
    assert calc.results["energy_std"] == pytest.approx(e.std(), abs=1e-10) and e.std() > 0
    np.testing.assert_allclose(calc.results["forces_std"], f.std(axis=0), atol=1e-10)
    np.testing.assert_allclose(calc.results["committee_energies"], e)


def test_schnet_layer_stack_files(tmp_path):
    from nnpflow.models.model_file import save_layer_stack
    from nnpflow.models.prediction import predict_structures
    from nnpflow.models.stack import LayerStack
    torch.manual_seed(0)
    model = LayerStack("SchNet", SCHNET_LAYERS, SCHNET_BUILD).double()
    path = tmp_path / "schnet.pt"
    save_layer_stack(path, model)
    atoms = cu_au_atoms()
    atoms.calc = NNPCalculator(path)
    ref = predict_structures(model, [Structure.from_ase(cu_au_atoms())])
    assert atoms.get_potential_energy() == pytest.approx(float(ref["energies"][0]), abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"][0], atol=1e-9)
    # no Force layer: energies only
    no_force = LayerStack("SchNet", SCHNET_LAYERS[:-1], SCHNET_BUILD).double()
    save_layer_stack(tmp_path / "energy_only.pt", no_force)
    atoms.calc = NNPCalculator(tmp_path / "energy_only.pt")
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_forces()


def test_foreign_files_are_refused(tmp_path):
    torch.save({"schema": "something.else", "schema_version": 1}, tmp_path / "x.pt")
    with pytest.raises(SchemaError, match="not an nnpflow model"):
        NNPCalculator(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(b"garbage")
    with pytest.raises(SchemaError, match="not a readable nnpflow model file"):
        NNPCalculator(tmp_path / "y.pt")
    with pytest.raises(FileNotFoundError):
        NNPCalculator(tmp_path / "missing.pt")


def test_calculator_threads_default_to_one_and_restore_the_callers(ann_files, monkeypatch):
    """Issue 13: each calculation runs with ``threads`` torch threads (default 1) and
    leaves the caller's setting as it was."""
    from nnpflow import calculator as calc_module
    seen = []
    original = calc_module._Model.__call__

    def spy(self, structure, forces):
        seen.append(torch.get_num_threads())
        return original(self, structure, forces)
    monkeypatch.setattr(calc_module._Model, "__call__", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        atoms = cu_au_atoms()
        atoms.calc = NNPCalculator(ann_files[0])
        atoms.get_forces()
        assert seen == [1] and torch.get_num_threads() == 2
        atoms = cu_au_atoms()
        atoms.calc = NNPCalculator(ann_files, threads=3)
        atoms.get_potential_energy()
        assert seen[1:] == [3, 3] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        NNPCalculator(ann_files[0], threads=0)
