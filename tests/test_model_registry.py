"""One model interface and one loader for every family (issue 14).

The pinned files in tests/data/model_files were written by the code before the
registry (tests/data/model_files/make_model_files.py says how); they must keep
loading and predicting what that code predicted."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from nnpflow.calculator import NNPCalculator
from nnpflow.errors import SchemaError
from nnpflow.models.model_file import save_torch_file
from nnpflow.models.prediction_result import committee_mean
from nnpflow.models.registry import FAMILIES, load_model, model_kind

DATA = Path(__file__).parent / "data" / "model_files"
ANN_FILE = DATA / "ann_potential_v1.pt"
STACK_FILE = DATA / "layer_stack_v1.pt"
EXPECTED = json.loads((DATA / "expected.json").read_text())["predictions"]


def pinned_structures():
    sys.path.insert(0, str(DATA))
    try:
        from make_model_files import structures
    finally:
        sys.path.remove(str(DATA))
    return structures()


@pytest.mark.parametrize("path, kind", [(ANN_FILE, "ann"), (STACK_FILE, "layer_stack")])
def test_files_written_before_the_registry_load_and_predict_the_same(path, kind):
    assert model_kind(path) == kind
    model = load_model(path, dtype=torch.float64)
    assert model.kind == kind and model.has_forces
    assert isinstance(model.module, torch.nn.Module)
    structures = pinned_structures()
    result = model.predict(structures, batch_size=2)
    for k, row in enumerate(EXPECTED[path.name]):
        assert result.names[k] == row["structure"]
        assert result.energies[k] == pytest.approx(row["energy"], abs=1e-9)
        np.testing.assert_allclose(result.forces[k], row["forces"], atol=1e-9)
        atoms = structures[k].to_ase()
        atoms.calc = NNPCalculator(path)
        assert atoms.get_potential_energy() == pytest.approx(row["energy"], abs=1e-9)
        np.testing.assert_allclose(atoms.get_forces(), row["forces"], atol=1e-9)


def test_old_loaders_still_read_the_pinned_files():
    from nnpflow.models.model_file import load_layer_stack
    from nnpflow.training.potential import TorchANNPotential
    pot = TorchANNPotential.from_file(ANN_FILE).to(dtype=torch.float64)
    assert pot.atomic_energies == {"Cu": -1.5, "Au": -2.25}
    assert pot.history == [{"epoch": 1, "lr": 0.01, "train_loss": 1.0}]
    r = pot.predict(pinned_structures())
    assert r.energies[0] == pytest.approx(EXPECTED[ANN_FILE.name][0]["energy"], abs=1e-9)
    _, meta = load_layer_stack(STACK_FILE)
    assert meta == {"note": "pinned format"}


def test_ann_forward_takes_and_returns_named_fields():
    """``ANNModel.forward(batch) -> {"E", "Fa"}``; the sum of the force field equals
    minus the energy's finite-difference gradient (independent check)."""
    from nnpflow.datasets.base import structure_sample
    from nnpflow.datasets.collate import collate_samples
    from nnpflow.database.featurize import split_with_derivatives
    model = load_model(ANN_FILE, dtype=torch.float64).module
    s = pinned_structures()[0]
    lookup = model.descriptor.species_to_idx

    def batch_of(structure):
        feats, ders = split_with_derivatives(
            model.descriptor.featurize_batch_with_derivatives([structure]), 1)
        return collate_samples([structure_sample(0, structure, feats[0],
                                                 np.array([lookup[x] for x in structure.species]),
                                                 0.0, feats[0].dtype, True, ders[0])])
    out = model(batch_of(s))
    assert set(out) == {"E", "Fa"} and out["E"].shape == (1,) and out["Fa"].shape == (4, 3)
    h = 1e-5
    moved = []
    for sign in (1, -1):
        p = s.positions.copy()
        p[1, 0] += sign * h
        moved.append(float(model(batch_of(type(s)(positions=p, species=s.species, cell=s.cell,
                                                  pbc=s.pbc)), eval_forces=False)["E"][0]))
    assert float(out["Fa"][1, 0]) == pytest.approx(-(moved[0] - moved[1]) / (2 * h), abs=1e-6)


def test_calculator_committee_is_committee_mean(tmp_path):
    structures = pinned_structures()
    members = [load_model(ANN_FILE, dtype=torch.float64), load_model(ANN_FILE, dtype=torch.float64)]
    with torch.no_grad():  # a second, different member
        members[1].module.net.nets[0][0].weight.mul_(1.1)
    other = tmp_path / "other.pt"
    save_torch_file(other, members[1].module.to_payload())
    mean = committee_mean([m.predict(structures) for m in members])
    atoms = structures[0].to_ase()
    atoms.calc = NNPCalculator([ANN_FILE, other])
    assert atoms.get_potential_energy() == pytest.approx(mean.energies[0], abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), mean.forces[0], atol=1e-9)
    assert atoms.calc.results["energy_std"] == pytest.approx(mean.energy_std[0], abs=1e-12)
    assert atoms.calc.results["energy_std"] > 0
    np.testing.assert_allclose(atoms.calc.results["forces_std"], mean.forces_std[0], atol=1e-12)


def test_unknown_schema_and_newer_version_are_refused(tmp_path):
    save_torch_file(tmp_path / "x.pt", {"schema": "someone.else", "schema_version": 1})
    with pytest.raises(SchemaError, match="not an nnpflow model"):
        load_model(tmp_path / "x.pt")
    payload = torch.load(ANN_FILE, weights_only=True)
    payload["schema_version"] = 99
    save_torch_file(tmp_path / "new.pt", payload)
    with pytest.raises(SchemaError, match="newer than this nnpflow understands"):
        model_kind(tmp_path / "new.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(SchemaError, match="not a readable nnpflow model file"):
        NNPCalculator(tmp_path / "junk.pt")


class _Harmonic(torch.nn.Module):
    """A toy family: E = k/2 * sum |r_i - r_0|^2 per structure (eV), F = -k (r_i - r_0)."""

    def __init__(self, k: float):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(float(k), dtype=torch.float64))

    def forward(self, fields):
        d = fields["Ra"] - fields["Ra"][:1]
        return {"E": 0.5 * self.k * (d ** 2).sum().reshape(1), "Fa": -self.k * d}


def test_a_new_family_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    from nnpflow.models.prediction_result import result_for_structures
    fam = types.ModuleType("toy_family")
    fam.SCHEMA, fam.SCHEMA_VERSION, fam.KIND = "toy.harmonic", 1, "harmonic"

    def load_payload(payload, device="cpu"):
        model = _Harmonic(0.0)
        model.load_state_dict(payload["state_dict"])
        return model

    def predict_structures(model, structures, eval_forces=True, batch_size=32,
                           show_progress=False):
        outs = [model({"Ra": torch.as_tensor(s.positions, dtype=torch.float64)})
                for s in structures]
        return result_for_structures(structures, [float(o["E"].detach()[0]) for o in outs],
                                     [o["Fa"].detach().numpy() for o in outs]
                                     if eval_forces else None)
    fam.load_payload, fam.predict_structures = load_payload, predict_structures
    fam.has_forces = lambda model: True
    fam.predict_database = None
    monkeypatch.setitem(sys.modules, "toy_family", fam)
    monkeypatch.setitem(FAMILIES, "toy.harmonic", "toy_family")
    save_torch_file(tmp_path / "toy.pt", {"schema": "toy.harmonic", "schema_version": 1,
                                          "state_dict": _Harmonic(2.0).state_dict()})
    s = pinned_structures()[1]
    atoms = s.to_ase()
    atoms.calc = NNPCalculator(tmp_path / "toy.pt")
    d = s.positions - s.positions[0]
    assert atoms.get_potential_energy() == pytest.approx(float((d ** 2).sum()), abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), -2.0 * d, atol=1e-12)
