"""Issue 13 (part A): non-finite numbers never pass silently, and model files are
not trusted blindly.

* Training stops at the first non-finite loss with an error naming the epoch and,
  where there is one, the structure with non-finite inputs; no model is written.
* Every JSON output is strict JSON: ``null`` where a number is not finite.
* Loading a model file checks its descriptor fingerprint against its settings, its
  weights' names and shapes against its architecture before allocating anything,
  and that its numbers are finite (weights, feature std > 0); a failure is a
  ``SchemaError`` naming the file.  ``nnpflow evaluate`` refuses a database whose
  descriptor is not the model's.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from nnpflow.calculator import NNPCalculator
from nnpflow.database import DatabaseReader, write_database
from nnpflow.errors import DescriptorMismatchError, NonFiniteError, SchemaError
from nnpflow.safe_write import strict_json, write_json
from nnpflow.splitting import load_split, make_split, write_split
from nnpflow.stages.train import run as train_stage
from nnpflow.training.potential import TorchANNPotential

from test_ann_data import ARCH, emt_cells, small_descriptor

TRAINING = {"epochs": 3, "batch_size": 4, "learning_rate": 0.01, "schedule": "constant",
            "patience": 0, "device": "cpu", "seed": 1}
ANN_MODEL = {"architecture": "ann", "hidden": [[4, "tanh"]]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A database of 8 EMT cells (features and derivatives persisted) and a split
    (5 training, 2 validation, 1 test)."""
    root = tmp_path_factory.mktemp("nonfinite")
    db = root / "db.h5"
    write_database(db, emt_cells(8, seed=1), descriptor=small_descriptor(),
                   persist_features=True, persist_force_derivatives=True)
    with DatabaseReader(db) as reader:
        write_split(root / "split.json",
                    make_split(len(reader), 2, 1, 0, reader.structures_fingerprint))
        names = reader.names()
    return {"root": root, "db": db, "split": root / "split.json", "names": names}


def _train(data, out: Path, database=None, **training):
    return train_stage(str(database or data["db"]), str(data["split"]), str(out / "model.pt"),
                       str(out / "history.csv"), "ann", ANN_MODEL, {**TRAINING, **training}, 0)


# ------------------------------------------------------------ non-finite loss

def test_a_nan_feature_stops_training_at_epoch_1_naming_the_structure(data, tmp_path):
    split = load_split(data["split"])
    victim = int(split.indices["train"][2])
    db = tmp_path / "nan.h5"
    shutil.copy(data["db"], db)
    with h5py.File(db, "r+") as h5:
        offsets = h5["parts/0/structures/atom_offset"][...]
        values = h5["parts/0/features/values"]
        row = values[offsets[victim]]
        row[3] = np.nan
        values[offsets[victim]] = row
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError) as err:
        _train(data, out, database=db)
    message = str(err.value)
    assert "at epoch 1" in message and "loss became nan" in message, message
    assert f"{data['names'][victim]} (non-finite features)" in message, message
    assert not (out / "model.pt").exists() and not (out / "history.csv").exists()


def test_a_diverging_training_stops_naming_the_epoch(data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError, match=r"at epoch 1, step \d+.*the weights diverged"):
        _train(data, out, learning_rate=1e300)
    assert not (out / "model.pt").exists()


def test_a_diverging_schnet_training_stops_naming_the_epoch(data, tmp_path):
    model = {"architecture": "schnet", "build_params": {"dim_embedding": 4, "num_rbf": 4,
                                                        "max_Za": 80, "cutoff_sr": 4.0},
             "layers": [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
                        {"name": "RandomAtomEmbedding"},
                        {"name": "Core", "params": {"num_interactions": 1,
                                                    "hidden_channels": 4}},
                        {"name": "AtomicAffine"}, {"name": "EnergyReduce"}, {"name": "Force"}]}
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError, match=r"at epoch 1, step \d+.*the weights diverged"):
        train_stage(str(data["db"]), str(data["split"]), str(out / "model.pt"),
                    str(out / "history.csv"), "schnet", model,
                    {**TRAINING, "learning_rate": 1e300}, 0)
    assert not (out / "model.pt").exists()


# ------------------------------------------------------------ strict JSON

def test_json_outputs_are_strict(tmp_path):
    obj = {"a": float("nan"), "b": [1.0, float("inf"), -float("inf")],
           "c": np.float32("nan"), "d": np.array([1.5, np.nan]), "e": 2}
    text = strict_json(obj)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None, None], "c": None,
                                "d": [1.5, None], "e": 2}
    write_json(tmp_path / "x.json", obj)
    # a strict parser (no NaN/Infinity constants) reads the file
    json.loads((tmp_path / "x.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_an_evaluation_with_non_finite_errors_writes_strict_json(data, tmp_path):
    """A test structure whose persisted features hold a NaN gives a NaN prediction;
    metrics.json says null for the errors it spoils, never the bare token NaN."""
    from nnpflow.evaluation.model_evaluation import evaluate_models, write_evaluation
    pot = TorchANNPotential(ARCH, small_descriptor())
    pot.net.init_weights(torch.Generator().manual_seed(0))
    pot.save(tmp_path / "m.pt")
    db = tmp_path / "nan.h5"
    shutil.copy(data["db"], db)
    with h5py.File(db, "r+") as h5:
        offsets = h5["parts/0/structures/atom_offset"][...]
        values = h5["parts/0/features/values"]
        row = values[offsets[2]]
        row[0] = np.nan
        values[offsets[2]] = row
    ev = evaluate_models([tmp_path / "m.pt"], db, {"test": [2], "train": [0, 1]})
    write_evaluation(ev, metrics=str(tmp_path / "metrics.json"))
    text = (tmp_path / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert metrics["test"]["energy_rmse_per_atom"] is None
    assert math.isfinite(metrics["train"]["energy_rmse_per_atom"])


# ------------------------------------------------------------ model files

@pytest.fixture(params=["envelope", "ann_potential_v1"])
def ann_file(tmp_path, request):
    """An ANN model file as written today (the ``nnpflow.model`` envelope) and in
    the schema before it (``nnpflow.ann_potential`` v1: the settings at the top
    level), which must be checked the same way."""
    pot = TorchANNPotential(ARCH, small_descriptor())
    pot.net.init_weights(torch.Generator().manual_seed(0))
    path = tmp_path / "model.pt"
    pot.save(path)
    if request.param == "ann_potential_v1":
        p = torch.load(path, weights_only=True)
        torch.save({"schema": "nnpflow.ann_potential", "schema_version": 1, **p["settings"],
                    **{k: p[k] for k in ("dtype", "state_dict", "history", "training",
                                         "metadata")}}, path)
    return path


def settings(payload: dict) -> dict:
    """The family settings of a model-file dict (the envelope's ``settings``; a file
    of the schemas before it has them at the top level)."""
    return payload["settings"] if "settings" in payload else payload


def _edit(path: Path, change) -> None:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def _loaders(path):
    """Every way a user loads a model file."""
    return [lambda: NNPCalculator(path), lambda: TorchANNPotential.from_file(path)]


def test_a_model_file_with_edited_descriptor_settings_is_refused(ann_file):
    _edit(ann_file, lambda p: settings(p)["descriptor"].update(rad_cutoff=4.0))
    for load in _loaders(ann_file):
        with pytest.raises(SchemaError, match=rf"^{ann_file}: .*do not match the descriptor "
                                              r"fingerprint stored with them"):
            load()


def test_a_model_file_whose_weights_do_not_fit_its_architecture_is_refused(ann_file):
    def widen(p):
        settings(p)["architecture"] = {s: [[5, act] if k == 0 else [n, act]
                                           for k, (n, act) in enumerate(layers)]
                                       for s, layers in settings(p)["architecture"].items()}
    _edit(ann_file, widen)
    for load in _loaders(ann_file):
        with pytest.raises(SchemaError, match=rf"^{ann_file}: .*has shape \(\d+, \d+\), but the "
                                              r"stored architecture needs \(5, \d+\)"):
            load()


def test_an_absurd_width_is_refused_before_allocating(ann_file):
    def absurd(p):
        settings(p)["architecture"] = {s: [[400_000_000, act] if k == 0 else [n, act]
                                           for k, (n, act) in enumerate(layers)]
                                       for s, layers in settings(p)["architecture"].items()}
    _edit(ann_file, absurd)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(SchemaError, match=rf"^{ann_file}: .*needs \(400000000, \d+\)"):
        NNPCalculator(ann_file)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500, f"peak memory grew by {grown_mib:.0f} MiB"


@pytest.mark.parametrize("what", ["nan_weight", "inf_bias", "zero_std", "nan_scale",
                                  "nan_atomic_energy"])
def test_a_model_file_with_bad_numbers_is_refused(ann_file, what):
    def damage(p):
        sd = p["state_dict"]
        if what == "nan_weight":
            sd["nets.0.0.weight"][0, 0] = float("nan")
        elif what == "inf_bias":
            sd["nets.1.0.bias"][1] = float("inf")
        elif what == "zero_std":
            sd["feature_std"][1, 2] = 0.0
        elif what == "nan_scale":
            settings(p)["normalization"]["energy_scale"] = float("nan")
        else:
            settings(p)["atomic_energies"] = {"Cu": float("nan")}
    _edit(ann_file, damage)
    expected = {"nan_weight": r"non-finite value\(s\) .* 'nets\.0\.0\.weight'",
                "inf_bias": r"non-finite value\(s\) .* 'nets\.1\.0\.bias'",
                "zero_std": r"feature standard deviation\(s\) <= 0 \(species Au\)",
                "nan_scale": r"normalization\.energy_scale is nan",
                "nan_atomic_energy": r"atomic_energies\.Cu is nan"}[what]
    for load in _loaders(ann_file):
        with pytest.raises(SchemaError, match=rf"^{ann_file}: .*{expected}"):
            load()


@pytest.mark.parametrize("layout", ["envelope", "layer_stack_v1"])
def test_a_layer_stack_file_with_bad_weights_is_refused(tmp_path, layout):
    from nnpflow.models.model_file import load_layer_stack, save_layer_stack
    from nnpflow.models.stack import LayerStack

    from test_calculator import SCHNET_BUILD, SCHNET_LAYERS
    path = tmp_path / "schnet.pt"

    def save():
        save_layer_stack(path, LayerStack("SchNet", SCHNET_LAYERS, SCHNET_BUILD).double())
        if layout == "layer_stack_v1":   # the schema before the envelope: "config"
            p = torch.load(path, weights_only=True)
            torch.save({"schema": "nnpflow.layer_stack", "schema_version": 1,
                        "config": p["settings"], "dtype": p["dtype"],
                        "state_dict": p["state_dict"], "metadata": p["metadata"]}, path)
    save()
    key = next(k for k, v in torch.load(path, weights_only=True)["state_dict"].items()
               if v.is_floating_point() and v.dim() == 2)

    def nan(p):
        p["state_dict"][key][0, 0] = float("nan")
    _edit(path, nan)
    for load in (NNPCalculator, load_layer_stack):
        with pytest.raises(SchemaError, match=rf"^{path}: .*non-finite .*{key}"):
            load(path)
    save()
    _edit(path, lambda p: settings(p).get("config", settings(p))["layers"][3]["params"].update(
        hidden_channels=16))
    for load in (NNPCalculator, load_layer_stack):
        with pytest.raises(SchemaError, match=rf"^{path}: the stored weights do not fit the "
                                              "stored architecture"):
            load(path)


def test_evaluate_never_uses_the_features_of_another_descriptor(data, tmp_path, capsys):
    """An evaluation on a database of another descriptor either refuses it
    (``DescriptorMismatchError``) or predicts exactly what the ASE calculator
    predicts from the positions with the model's own descriptor; never from the
    database's features.  A model whose descriptor settings were edited to match
    such a database is refused by ``nnpflow evaluate``, naming the file."""
    import torch as _torch

    from nnpflow.cli import main
    from nnpflow.descriptors import ChebyshevDescriptor
    from nnpflow.evaluation.model_evaluation import evaluate_models
    out = tmp_path / "m"
    _train(data, out, epochs=1)
    other = ChebyshevDescriptor(["Cu", "Au"], rad_order=4, rad_cutoff=4.0, ang_order=2,
                                ang_cutoff=3.5, min_cutoff=0.55)
    db = tmp_path / "other.h5"
    cells = emt_cells(4, seed=1)
    write_database(db, cells, descriptor=other, persist_features=True,
                   persist_force_derivatives=True)
    try:
        ev = evaluate_models([out / "model.pt"], db, {"all": [0, 1]})
    except DescriptorMismatchError:
        pass
    else:
        for k in (0, 1):
            atoms = cells[k].to_ase()
            atoms.calc = NNPCalculator(out / "model.pt")
            assert ev.predictions["all"].energies[k] == pytest.approx(
                atoms.get_potential_energy(), abs=1e-6)
    # the model's descriptor edited to the database's: refused, the file named
    edited = tmp_path / "edited.pt"
    payload = _torch.load(out / "model.pt", weights_only=True)
    payload["settings"]["descriptor"]["rad_cutoff"] = 4.0
    _torch.save(payload, edited)
    code = main(["evaluate", str(edited), "--database", str(db), "-o", str(tmp_path / "ev")])
    assert code != 0
    err = capsys.readouterr().err
    assert f"{edited}: " in err and "do not match the descriptor fingerprint" in err, err
    assert not (tmp_path / "ev").exists()
