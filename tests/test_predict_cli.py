"""``nnpflow predict -c predict.yaml -m MODEL_DIR [-o OUT]`` end to end on a tiny run of
``nnpflow train``: the run's test part and new data, values checked against calling
the saved models directly, metric.csv against numbers recomputed here, clear errors."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.data import chemical_symbols

from nnpflow.cli import main
from nnpflow.database import DatabaseReader
from nnpflow.models.batch import packed_for_model
from nnpflow.models.model_file import load_layer_stack

from test_train_cli import ATOMIC_ENERGIES as REFS, make_dataset, write_methanol_frames


LAYERS = [{"name": "RangeSeparation"}, {"name": "GaussianSmearing", "params": {"cuton": 0.0}},
          {"name": "RandomAtomEmbedding"},
          {"name": "Core", "params": {"num_interactions": 1, "hidden_channels": 8,
                                      "activation_fn": "swish"}},
          {"name": "AtomicAffine", "params": {"shifts": {"Ea": {"values": 0, "learnable": True},
                                                         "Qa": {"values": 0, "learnable": True}},
                                              "scales": {"Ea": {"values": 1, "learnable": True},
                                                         "Qa": {"values": 0.1,
                                                                "learnable": False}}}},
          {"name": "ChargeConservation"}, {"name": "AtomicCharge2Dipole"},
          {"name": "ElectrostaticEnergy", "params": {"flavor": "SpookyNet"}},
          {"name": "EnergyReduce"}, {"name": "Force"}]
CONFIG = {
    "Datahub": {"data_path": "dataset.pkl", "data_format": "pickle",
                "features": {"Ra": "coordinates", "Za": "atomic_numbers"},
                "targets": {"E": "energy", "Fa": "gradient"}, "preload": True,
                "transforms": {"atomic_energy": "atomic_energy.csv", "negative_gradient": True}},
    "Modelhub": {
        "FF01": {"suffix": "tiny", "architecture": "SchNet",
                 "build_params": {"dim_embedding": 8, "num_rbf": 6, "max_Za": 10,
                                  "cutoff_sr": 4.0, "cutoff_fn": "polynomial", "cutoff_lr": 6.0,
                                  "Hartree_in_E": 27.211386, "Bohr_in_R": 0.5291772108},
                 "layers": LAYERS, "loss": {"rmse": {"E": 1, "Fa": 10}}},
        "FF02": {"architecture": "SchNet",
                 "build_params": {"dim_embedding": 8, "num_rbf": 4, "max_Za": 10,
                                  "cutoff_sr": 3.0},
                 "layers": ["RangeSeparation", "GaussianSmearing", "RandomAtomEmbedding",
                            {"name": "Core", "params": {"num_interactions": 1,
                                                        "hidden_channels": 4}},
                            "EnergyReduce"],
                 "loss": {"mae": {"E": 1}}}},
    "Trainer": {"Splitter": {"parts": ["training", "validation", "test"],
                             "ratios": [0.5, 0.25, 0.25], "seed": 3},
                "batch_size": 4, "max_epochs": 2, "learning_rate": 0.001, "warmup_ratio": 0.0},
}
MODELS = ("FF01-SchNet-tiny", "FF02-SchNet")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished ``nnpflow train`` run (trained once for the module)."""
    folder = tmp_path_factory.mktemp("run")
    make_dataset(folder, 12, seed=0)
    (folder / "train.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        assert main(["train", "-c", "train.yaml", "-o", "out"]) == 0
    return folder / "out"


@pytest.fixture
def run(run_dir, tmp_path, monkeypatch):
    """A private copy of the run (tests may delete files of it); cwd = tmp_path."""
    copy_dir = tmp_path / "out"
    shutil.copytree(run_dir, copy_dir)
    monkeypatch.chdir(tmp_path)
    return copy_dir


def write_yaml(path: Path, content) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False) if content is not None else "")
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def direct(model_path: Path, structures) -> dict:
    """The saved model called directly on the structures (no nnpflow.predict code)."""
    model, _ = load_layer_stack(model_path)
    dtype = next(model.parameters()).dtype
    inputs, _ = packed_for_model(structures, model).batch(np.arange(len(structures)), dtype=dtype)
    out = model.eval()(inputs)
    return {k: out[k].detach().double().numpy() for k in ("E", "Fa", "Qa", "Q", "M2")
            if k in model.outputs}


def test_without_datahub_evaluates_the_runs_test_part(run, tmp_path):
    config = write_yaml(tmp_path / "predict.yaml", None)  # an empty predict.yaml
    assert main(["predict", "-c", str(config), "-m", str(run), "-o", "pred"]) == 0
    processed = next(run.glob("processed_dataset_*"))
    split = json.loads(next(processed.glob("split_*.json")).read_text())
    test_idx = split["indices"]["test"]
    assert len(test_idx) == 3
    with DatabaseReader(processed / "dataset.h5") as reader:
        structures = reader.structures(test_idx)
    rows = {r["model"]: r for r in read_csv(tmp_path / "pred" / "metric.csv")}
    assert set(rows) == set(MODELS)
    for folder in MODELS:
        npz = np.load(tmp_path / "pred" / f"{folder}-prediction.npz")
        assert npz["frame"].tolist() == test_idx
        want = direct(run / folder / "model_best.pt", structures)
        np.testing.assert_allclose(npz["predict_E"], want["E"], rtol=1e-6, atol=1e-6)
        ref_e = np.array([s.energy for s in structures])
        np.testing.assert_allclose(npz["E"], ref_e, rtol=1e-12)
        if "Fa" in want:
            np.testing.assert_allclose(npz["predict_Fa"], want["Fa"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(npz["Fa"], np.concatenate([s.forces for s in structures]))
        else:
            assert "predict_Fa" not in npz.files
        if "M2" in want:  # charges and dipoles of the electrostatics model, no references
            for field in ("Qa", "Q", "M2"):
                np.testing.assert_allclose(npz[f"predict_{field}"], want[field], rtol=1e-5,
                                           atol=1e-7)
                assert field not in npz.files
            assert npz["predict_Qa"].shape == (18,) and npz["predict_M2"].shape == (3, 3)
        # metric.csv holds the run's metrics (here each model's loss terms) of these numbers
        row = rows[folder]
        assert int(row["n_frames"]) == 3 and row["data"] == "test part of out"
        err = npz["predict_E"] - npz["E"]
        if folder == "FF01-SchNet-tiny":
            rmse_e = np.sqrt(np.mean(err ** 2))
            rmse_f = np.sqrt(np.mean((npz["predict_Fa"] - npz["Fa"]) ** 2))
            assert float(row["rmse_E"]) == pytest.approx(rmse_e, rel=1e-9)
            assert float(row["rmse_Fa"]) == pytest.approx(rmse_f, rel=1e-9)
            assert float(row["score"]) == pytest.approx(rmse_e + 10 * rmse_f, rel=1e-9)
            assert float(row["force_rmse"]) == pytest.approx(rmse_f, rel=1e-9)
        else:
            assert float(row["mae_E"]) == pytest.approx(np.mean(np.abs(err)), rel=1e-9)
            assert row["force_rmse"] == ""
        n = npz["n_atoms"]
        assert float(row["energy_rmse_per_atom"]) == pytest.approx(
            np.sqrt(np.mean((err / n) ** 2)), rel=1e-9)
        # ... and agree with the test metrics nnpflow train wrote
        trained = json.loads((run / folder / "test_metrics.json").read_text())
        for key, value in trained["terms"].items():
            assert float(row[key]) == pytest.approx(value, rel=1e-4), key
        frames = read_csv(tmp_path / "pred" / f"{folder}-prediction.csv")
        assert [int(f["frame"]) for f in frames] == test_idx
        if "M2" in want:
            assert [float(f["predict_M2_y"]) for f in frames] == pytest.approx(
                npz["predict_M2"][:, 1].tolist(), rel=1e-12)
            assert all(f["M2_y"] == "" for f in frames)
        assert [float(f["predict_E"]) for f in frames] == pytest.approx(npz["predict_E"].tolist(),
                                                                        rel=1e-12)


def test_unsaved_split_is_drawn_again(run, tmp_path):
    processed = next(run.glob("processed_dataset_*"))
    split_file = next(processed.glob("split_*.json"))
    test_idx = json.loads(split_file.read_text())["indices"]["test"]
    split_file.unlink()  # as with Splitter.save: false
    config = write_yaml(tmp_path / "predict.yaml", {"Metric": {"E": {"mae": 1}},
                                                    "Trainer": {"non_target_features": None}})
    assert main(["predict", "-c", str(config), "-m", str(run)]) == 0  # OUT defaults to MODEL_DIR
    npz = np.load(run / "FF02-SchNet-prediction.npz")
    assert npz["frame"].tolist() == test_idx
    assert (run / "metric.csv").is_file()


def test_with_datahub_evaluates_every_frame_of_new_data(run, tmp_path):
    raw = write_methanol_frames(tmp_path / "new.pkl", 5, seed=42)
    symbols = [chemical_symbols[z] for z in raw["atomic_numbers"]]
    config = write_yaml(tmp_path / "predict.yaml", {
        "Datahub": {"data_path": "new.pkl", "data_format": "pickle",
                    "features": {"Ra": "coordinates", "Za": "atomic_numbers"},
                    "targets": {"E": "energy", "Fa": "gradient"},
                    # the run's energy reference is kept; its negative_gradient applies too
                    # (data of the run's format)
                    "transforms": {"atomic_energy": "other.csv"}},
        "Metric": {"E": {"rmse": 1, "mae": 2}},  # Enerzyme's form
        "Trainer": {"inference_batch_size": 2, "dtype": "float64"}})
    assert main(["predict", "-c", str(config), "-m", str(run), "-o", "pred"]) == 0
    out = tmp_path / "pred"
    assert len(list(out.glob("processed_dataset_*"))) == 1
    # references: the run's transforms applied to the raw data, computed here
    offset = sum(REFS[s] for s in symbols)
    npz = np.load(out / "FF01-SchNet-tiny-prediction.npz")
    assert npz["frame"].tolist() == list(range(5))
    np.testing.assert_allclose(npz["E"], raw["energy"] - offset, rtol=1e-12)
    np.testing.assert_allclose(npz["Fa"], -raw["gradient"].reshape(-1, 3), rtol=1e-12)
    assert npz["Za"].tolist() == raw["atomic_numbers"].tolist() * 5
    from nnpflow.structure import Structure
    structures = [Structure(positions=p, species=symbols) for p in raw["coordinates"]]
    model, _ = load_layer_stack(run / "FF01-SchNet-tiny" / "model_best.pt")
    model = model.double().eval()
    inputs, _ = packed_for_model(structures, model).batch(np.arange(5), dtype=torch.float64)
    want = model(inputs)
    np.testing.assert_allclose(npz["predict_E"], want["E"].detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(npz["predict_Fa"], want["Fa"].detach().numpy(), rtol=1e-9,
                               atol=1e-12)
    rows = {r["model"]: r for r in read_csv(out / "metric.csv")}
    row = rows["FF01-SchNet-tiny"]
    assert int(row["n_frames"]) == 5 and row["data"] == str(tmp_path / "new.pkl")
    err = npz["predict_E"] - npz["E"]
    rmse_e, mae_e = np.sqrt(np.mean(err ** 2)), np.mean(np.abs(err))
    assert float(row["rmse_E"]) == pytest.approx(rmse_e, rel=1e-9)
    assert float(row["mae_E"]) == pytest.approx(mae_e, rel=1e-9)
    assert float(row["score"]) == pytest.approx(rmse_e + 2 * mae_e, rel=1e-9)
    assert float(row["force_mae"]) == pytest.approx(
        np.mean(np.abs(npz["predict_Fa"] - npz["Fa"])), rel=1e-9)
    assert rows["FF02-SchNet"]["force_mae"] == ""  # FF02 predicts no forces


@pytest.mark.parametrize("setup, predict_yaml, message", [
    ("no_dir", None, "no such model directory"),
    ("no_config", None, "not an output directory of nnpflow train: it has no config.yaml"),
    ("no_model", None, "model FF02 has no model_best.pt"),
    ("ok", {"Trainer": {"batchsize": 4}}, "Trainer.batchsize: unknown key (did you mean "
                                          "'batch_size'?)"),
    ("ok", {"Metric": {"Qa": {"rmse": 1}}}, "Metric.rmse.Qa: the data (test part of out) has "
                                            "no reference Qa for 18 atoms"),
    ("ok", {"Metric": {"Q": {"rmse": 1}}}, "Metric.rmse.Q: model FF02 does not predict Q "
                                           "(it predicts E, Qa)"),
    ("ok", {"Metric": {"Fa": {"rmse": 1}}}, "Metric.rmse.Fa: model FF02 does not predict Fa"),
    ("ok", {"Datahub": {"data_path": "missing.pkl"}}, "missing.pkl: cannot read data file"),
    ("ok", {"Metric": {"E": {"rsme": 1}}}, "Metric.E.rsme: unknown metric"),
    ("ok", {"Trainer": {"non_target_features": ["E_var"]}},
     "Trainer.non_target_features: ['E_var']: the models nnpflow trains from a train.yaml are "
     "single models"),
])
def test_clear_errors(run, tmp_path, capsys, setup, predict_yaml, message):
    model_dir = run
    if setup == "no_dir":
        model_dir = tmp_path / "nowhere"
    elif setup == "no_config":
        (run / "config.yaml").unlink()
    elif setup == "no_model":
        (run / "FF02-SchNet" / "model_best.pt").unlink()
    config = write_yaml(tmp_path / "predict.yaml", predict_yaml)
    assert main(["predict", "-c", str(config), "-m", str(model_dir), "-o", "pred"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "pred" / "metric.csv").exists()


def test_new_data_in_another_format(run, tmp_path):
    """extxyz data of a periodic cell: no field mapping and no sign flip are inherited
    from the run's pickle, its energy reference is."""
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.io import read, write

    rng = np.random.default_rng(5)
    frames = []
    for _ in range(3):
        atoms = molecule("CH3OH")
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        atoms.cell = np.diag([7.0, 7.5, 8.0])  # images within the 6 Å cutoff_lr
        atoms.pbc = True
        atoms.center()
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    write(tmp_path / "new.extxyz", frames)
    frames = read(tmp_path / "new.extxyz", ":")  # the values as written (rounded)
    config = write_yaml(tmp_path / "predict.yaml", {
        "Datahub": {"data_path": "new.extxyz", "data_format": "extxyz"}})
    assert main(["predict", "-c", str(config), "-m", str(run), "-o", "pred"]) == 0
    npz = np.load(tmp_path / "pred" / "FF01-SchNet-tiny-prediction.npz")
    offset = sum(REFS[s] for s in frames[0].get_chemical_symbols())
    np.testing.assert_allclose(npz["E"], [a.get_potential_energy() - offset for a in frames],
                               rtol=1e-10)
    np.testing.assert_allclose(npz["Fa"], np.concatenate([a.get_forces() for a in frames]),
                               rtol=1e-10, atol=1e-12)
    from nnpflow.structure import Structure
    structures = [Structure.from_ase(a) for a in frames]
    assert structures[0].cell is not None
    want = direct(run / "FF01-SchNet-tiny" / "model_best.pt", structures)
    np.testing.assert_allclose(npz["predict_E"], want["E"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(npz["predict_Fa"], want["Fa"], rtol=1e-5, atol=1e-6)


def test_missing_predict_yaml(run, tmp_path, capsys):
    assert main(["predict", "-c", "absent.yaml", "-m", str(run)]) == 2
    assert "no such predict configuration" in capsys.readouterr().err


def test_ann_run_is_predicted_through_the_registry(tmp_path, monkeypatch):
    """An ``architecture: ANN`` model of a train.yaml goes the same way."""
    from nnpflow.training.potential import TorchANNPotential

    make_dataset(tmp_path, 8, seed=1)
    config = copy.deepcopy(CONFIG)
    config["Modelhub"] = {"FF03": {
        "architecture": "ANN", "hidden": [[4, "tanh"]],
        "descriptor": {"rad_order": 3, "rad_cutoff": 4.0, "ang_order": 1, "ang_cutoff": 3.0},
        "loss": {"rmse": {"E": 1, "Fa": 1}}}}
    config["Trainer"].update({"ema_decay": None, "batch_size": 2})
    write_yaml(tmp_path / "train.yaml", config)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-c", "train.yaml", "-o", "out"]) == 0
    assert main(["predict", "-c", str(write_yaml(tmp_path / "p.yaml", None)), "-m", "out"]) == 0
    npz = np.load(tmp_path / "out" / "FF03-ANN-prediction.npz")
    processed = next((tmp_path / "out").glob("processed_dataset_*"))
    split = json.loads(next(processed.glob("split_*.json")).read_text())
    assert npz["frame"].tolist() == split["indices"]["test"]
    with DatabaseReader(processed / "dataset.h5") as reader:
        test = reader.structures(split["indices"]["test"])
    pot = TorchANNPotential.from_file(tmp_path / "out" / "FF03-ANN" / "model_best.pt")
    want = pot.predict(test)  # the potential's own API, not the registry
    np.testing.assert_allclose(npz["predict_E"], want.energies, rtol=1e-6)
    np.testing.assert_allclose(npz["predict_Fa"], np.concatenate(want.forces), rtol=1e-5,
                               atol=1e-7)
    trained = json.loads((tmp_path / "out" / "FF03-ANN" / "test_metrics.json").read_text())
    row = read_csv(tmp_path / "out" / "metric.csv")[0]
    assert float(row["force_rmse"]) == pytest.approx(trained["force_rmse"], rel=1e-5)
    assert float(row["energy_rmse_per_atom"]) == pytest.approx(trained["energy_rmse_per_atom"],
                                                               rel=1e-5)
    assert float(row["force_rmse"]) == pytest.approx(pot.evaluate(test)["force_rmse"], rel=1e-6)
