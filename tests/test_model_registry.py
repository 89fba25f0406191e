"""One model interface, one model file (the ``nnpflow.model`` envelope) and one
writer and loader for every family (issue 14).

The pinned files in tests/data/model_files were written by the code before the
registry (f0c176d) and by the last code before the envelope (9b879bb), in the
schemas ``nnpflow.ann_potential`` v1 and ``nnpflow.layer_stack`` v1
(tests/data/model_files/make_model_files.py says how); they must keep loading
and predicting what that code predicted."""

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
from nnpflow.models.model_file import MODEL_SCHEMA, save_torch_file
from nnpflow.models.prediction_result import committee_mean
from nnpflow.models.registry import FAMILIES, load_model, model_kind, save_model

DATA = Path(__file__).parent / "data" / "model_files"
ANN_FILE = DATA / "ann_potential_v1.pt"
STACK_FILE = DATA / "layer_stack_v1.pt"
TODAY = "9b879bb"      # the last code before the envelope
COMMITTEE = DATA / f"ann_committee_v1_{TODAY}"
EXPECTED = {**json.loads((DATA / "expected.json").read_text())["predictions"],
            **json.loads((DATA / f"expected_{TODAY}.json").read_text())["predictions"]}
PINNED = [(ANN_FILE, "ann"), (STACK_FILE, "layer_stack"),
          (DATA / f"ann_potential_v1_{TODAY}.pt", "ann"),
          (DATA / f"layer_stack_v1_{TODAY}.pt", "layer_stack")]


def pinned_structures():
    sys.path.insert(0, str(DATA))
    try:
        from make_model_files import structures
    finally:
        sys.path.remove(str(DATA))
    return structures()


def assert_expected(result, rows, atol=1e-9):
    for k, row in enumerate(rows):
        assert result.names[k] == row["structure"]
        assert result.energies[k] == pytest.approx(row["energy"], abs=atol)
        np.testing.assert_allclose(result.forces[k], row["forces"], atol=atol)


@pytest.mark.parametrize("path, kind", PINNED)
def test_files_written_before_the_envelope_load_and_predict_the_same(path, kind):
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


@pytest.mark.parametrize("ann_file, stack_file",
                         [(ANN_FILE, STACK_FILE), (PINNED[2][0], PINNED[3][0])])
def test_old_loaders_still_read_the_pinned_files(ann_file, stack_file):
    from nnpflow.models.model_file import load_layer_stack
    from nnpflow.training.potential import TorchANNPotential
    pot = TorchANNPotential.from_file(ann_file).to(dtype=torch.float64)
    assert pot.atomic_energies == {"Cu": -1.5, "Au": -2.25}
    assert pot.history == [{"epoch": 1, "lr": 0.01, "train_loss": 1.0}]
    assert_expected(pot.predict(pinned_structures()), EXPECTED[ann_file.name])
    _, meta = load_layer_stack(stack_file)
    assert meta == {"note": "pinned format"}
    with pytest.raises(SchemaError, match=rf"^{stack_file}: holds a model of family "
                                          "'layer_stack', expected 'ann'"):
        TorchANNPotential.from_file(stack_file)
    with pytest.raises(SchemaError, match=rf"^{ann_file}: holds a model of family "
                                          "'ann', expected 'layer_stack'"):
        load_layer_stack(ann_file)


def test_a_pinned_committee_loads_and_predicts_the_same():
    """Members saved by ``ANNCommittee.save`` before the envelope: the committee,
    the calculator and evaluation's committee mean give the pinned mean."""
    from nnpflow.training.committee import ANNCommittee
    paths = sorted(COMMITTEE.glob("member_*.pt"))
    assert [p.name for p in paths] == ["member_0.pt", "member_1.pt"]
    structures = pinned_structures()
    rows = EXPECTED[COMMITTEE.name]
    committee = ANNCommittee.from_files(paths)
    for member in committee.members:
        member.to(dtype=torch.float64)
    assert_expected(committee.predict(structures), rows)
    assert_expected(committee_mean([load_model(p, dtype=torch.float64).predict(structures)
                                    for p in paths]), rows)
    for s, row in zip(structures, rows):
        atoms = s.to_ase()
        atoms.calc = NNPCalculator(paths)
        assert atoms.get_potential_energy() == pytest.approx(row["energy"], abs=1e-9)
        assert atoms.calc.results["energy_std"] > 0  # two different members


def assert_settings_kept(before: dict, after: dict) -> None:
    """Every setting of a layer-stack model ``before`` is in ``after`` unchanged
    (``after`` may add the parameters nnpflow gained since)."""
    assert {k: v for k, v in after.items() if k != "layers"} == {
        k: v for k, v in before.items() if k != "layers"}
    assert [x["name"] for x in after["layers"]] == [x["name"] for x in before["layers"]]
    for old, new in zip(before["layers"], after["layers"]):
        assert {k: v for k, v in new["params"].items() if k in old["params"]} == old["params"]


@pytest.mark.parametrize("path, kind", PINNED[2:])
def test_every_family_writes_the_envelope_and_reads_it_back_the_same(path, kind, tmp_path):
    """A pinned file loaded and written again by :func:`save_model` is an
    ``nnpflow.model`` v2 envelope of the same family with the same settings,
    weights and metadata, and predicts the pinned numbers."""
    old = load_model(path)
    new_path = tmp_path / "again.pt"
    save_model(new_path, old.module, metadata=old.metadata, history=old.payload["history"],
               training=old.payload["training"])
    raw = torch.load(new_path, weights_only=True)
    assert raw["schema"] == MODEL_SCHEMA == "nnpflow.model" and raw["schema_version"] == 2
    assert raw["family"] == kind and raw["family_version"] == 1
    assert raw["created_by"].startswith("nnpflow ")
    if kind == "layer_stack":
        # the settings as saved then, with today's parameters a file written before them
        # lacks made explicit (AtomicAffine's order: the scale-then-shift it computed)
        assert raw["settings"] == old.module.config()
        assert_settings_kept(old.payload["settings"], raw["settings"])
    else:
        assert raw["settings"] == old.payload["settings"]
    assert raw["metadata"] == old.metadata and raw["dtype"] == old.payload["dtype"]
    assert raw["state_dict"].keys() == old.payload["state_dict"].keys()
    assert all(torch.equal(raw["state_dict"][k], v) for k, v in old.payload["state_dict"].items())
    legacy = torch.load(path, weights_only=True)
    assert old.payload["upgraded_from"] == f"{legacy['schema']} v1" and "upgraded_from" not in raw
    assert set(legacy["state_dict"]) == set(raw["state_dict"])
    if kind == "layer_stack":
        assert_settings_kept(legacy["config"], raw["settings"])
        affine = [x for x in raw["settings"]["layers"] if x["name"] == "AtomicAffine"]
        assert all(x["params"]["order"] == "scale_then_shift" for x in affine)
    else:
        assert raw["settings"]["descriptor"] == legacy["descriptor"]
        assert raw["history"] == legacy["history"]
    model = load_model(new_path, dtype=torch.float64)
    assert model.kind == kind
    assert_expected(model.predict(pinned_structures()), EXPECTED[path.name])


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
    with pytest.raises(SchemaError, match=rf"^{tmp_path / 'x.pt'}: .*not an nnpflow model"):
        load_model(tmp_path / "x.pt")
    payload = torch.load(ANN_FILE, weights_only=True)
    payload["schema_version"] = 99
    save_torch_file(tmp_path / "new.pt", payload)
    with pytest.raises(SchemaError, match="newer than this nnpflow understands"):
        model_kind(tmp_path / "new.pt")
    save_model(tmp_path / "env.pt", load_model(STACK_FILE).module)
    envelope = torch.load(tmp_path / "env.pt", weights_only=True)
    for change, message in [
            ({"schema_version": 3}, "nnpflow.model schema version 3 is newer than this nnpflow "
                                    r"understands \(2\); upgrade nnpflow"),
            ({"family_version": 2}, "layer_stack model version 2 is newer than this nnpflow "
                                    r"understands \(1\); upgrade nnpflow"),
            ({"family": "mace"}, "holds a model of family 'mace', which this nnpflow does not "
                                 "know"),
            ({"family_version": "1"}, "invalid family_version '1'")]:
        save_torch_file(tmp_path / "edited.pt", {**envelope, **change})
        for load in (load_model, model_kind, NNPCalculator):
            with pytest.raises(SchemaError, match=rf"^{tmp_path / 'edited.pt'}: {message}"):
                load(tmp_path / "edited.pt")
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
    from nnpflow.models.model_file import model_envelope
    fam = types.ModuleType("toy_family")
    fam.KIND, fam.VERSION, fam.MODEL_TYPE = "harmonic", 1, _Harmonic

    def envelope(model, metadata=None, history=(), training=None):
        return model_envelope("harmonic", 1, {}, model.state_dict(), torch.float64,
                              metadata=metadata, history=history, training=training)

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
    fam.envelope = envelope
    fam.has_forces = lambda model: True
    fam.predict_database = None
    monkeypatch.setitem(sys.modules, "toy_family", fam)
    monkeypatch.setitem(FAMILIES, "harmonic", "toy_family")
    save_model(tmp_path / "toy.pt", _Harmonic(2.0))
    assert model_kind(tmp_path / "toy.pt") == "harmonic"
    s = pinned_structures()[1]
    atoms = s.to_ase()
    atoms.calc = NNPCalculator(tmp_path / "toy.pt")
    d = s.positions - s.positions[0]
    assert atoms.get_potential_energy() == pytest.approx(float((d ** 2).sum()), abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), -2.0 * d, atol=1e-12)
