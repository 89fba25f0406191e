"""``architecture: ANN`` in ``nnpflow train -c train.yaml``: outputs, test metrics
that match the saved model, resume and config errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import yaml

from nnpflow.cli import main
from nnpflow.errors import ConfigError
from nnpflow.training.potential import TorchANNPotential, read_history_csv
from nnpflow.training.yaml_config import resolve_config

CONFIG = {
    "Datahub": {"data_path": "dataset.pkl", "data_format": "pickle",
                "features": {"Ra": "coordinates", "Za": "atomic_numbers"},
                "targets": {"E": "energy", "Fa": "forces"}},
    "Modelhub": {"FF03": {
        "architecture": "ANN", "hidden": [[6, "tanh"], [6, "tanh"]],
        "descriptor": {"rad_order": 4, "rad_cutoff": 4.0, "ang_order": 2, "ang_cutoff": 3.0},
        "loss": {"rmse": {"E": 1, "Fa": 1}}}},
    "Trainer": {"Splitter": {"ratios": [0.5, 0.25, 0.25], "seed": 1}, "batch_size": 3,
                "max_epochs": 3, "learning_rate": 0.01, "warmup_ratio": 0.0, "ema_decay": None,
                "patience": 5},
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    from ase.build import molecule
    from ase.calculators.emt import EMT
    rng = np.random.default_rng(0)
    base = molecule("CH3OH")
    coords, energy, forces = [], [], []
    for _ in range(12):
        atoms = base.copy()
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        coords.append(atoms.positions.copy())
        energy.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    with open(tmp_path / "dataset.pkl", "wb") as fh:
        pickle.dump({"coordinates": np.array(coords), "atomic_numbers": base.numbers.copy(),
                     "energy": np.array(energy), "forces": np.array(forces)}, fh)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(CONFIG))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_ann_entry_trains_and_reports_test_metrics(workdir):
    assert main(["train", "-c", "train.yaml", "-o", "out"]) == 0
    folder = workdir / "out" / "FF03-ANN"
    for name in ("model_best.pt", "history.csv", "test_metrics.json", "checkpoint_last.pt"):
        assert (folder / name).is_file(), name
    pot = TorchANNPotential.from_file(folder / "model_best.pt")
    assert pot.species == ["H", "C", "O"]                      # by atomic number
    assert pot.architecture["O"] == [(6, "tanh"), (6, "tanh")]
    assert len(read_history_csv(folder / "history.csv")) == 3
    metrics = json.loads((folder / "test_metrics.json").read_text())
    assert metrics["n_structures"] == 3 and set(metrics["per_species"]) == {"H", "C", "O"}
    # the saved model reproduces the reported test errors
    resolved = yaml.safe_load((workdir / "out" / "config.yaml").read_text())
    from nnpflow.database import DatabaseReader
    processed = next((workdir / "out").glob("processed_dataset_*"))
    split = json.loads(next(processed.glob("split_*.json")).read_text())
    with DatabaseReader(processed / "dataset.h5") as reader:
        test = [reader.structure(i) for i in split["indices"]["test"]]
    assert pot.evaluate(test)["force_rmse"] == pytest.approx(metrics["force_rmse"], rel=1e-5)
    assert resolved["Modelhub"]["FF03"]["descriptor"]["min_cutoff"] == 0.55
    # finished: --resume does nothing new; a plain rerun refuses to overwrite
    assert main(["train", "-c", "train.yaml", "-o", "out", "--resume"]) == 0
    assert main(["train", "-c", "train.yaml", "-o", "out"]) != 0


@pytest.mark.parametrize("change, message", [
    ({"loss": {"mae": {"E": 1}}}, "the ANN loss is rmse over E and/or Fa"),
    ({"hidden": [[6, "tahn"]]}, "unknown activation 'tahn'"),
    ({"descriptor": {"rad_ordr": 3}}, r"descriptor: unknown key\(s\) rad_ordr"),
    ({"layers": []}, "unknown key for architecture ANN"),
])
def test_ann_entry_errors(change, message):
    config = json.loads(json.dumps(CONFIG))
    config["Modelhub"]["FF03"].update(change)
    with pytest.raises(ConfigError, match=message):
        resolve_config(config)


def _write(workdir, **trainer):
    config = json.loads(json.dumps(CONFIG))
    config["Trainer"].update(trainer)
    (workdir / "train.yaml").write_text(yaml.safe_dump(config))


def test_ann_with_enerzymes_resume_keys(workdir):
    """resume: 2 continues the ANN's saved training (checkpoint_last.pt) as --resume does;
    resume: 1 and ema_use_num_updates: false are refused for the ANN, naming the key."""
    _write(workdir, max_epochs=2, resume=2)  # nothing saved yet: a new training
    assert main(["train", "-c", "train.yaml", "-o", "out"]) == 0
    _write(workdir, max_epochs=3, resume=2)
    assert main(["train", "-c", "train.yaml", "-o", "out"]) == 0
    history = read_history_csv(workdir / "out" / "FF03-ANN" / "history.csv")
    assert len(history) == 3
    log = "\n".join(p.read_text() for p in sorted((workdir / "out" / "logs").glob("*.log")))
    assert "Trainer.resume 2: continuing the training saved in" in log
    _write(workdir, resume=1)
    with pytest.raises(ConfigError, match=r"Trainer\.resume: 1 .* layer-stack architectures, "
                                          r"not ANN"):
        from nnpflow.training.session import run_train
        run_train("train.yaml", "out2")
    _write(workdir, ema_decay=0.9, ema_use_num_updates=False)
    with pytest.raises(ConfigError, match=r"Trainer\.ema_use_num_updates: false"):
        run_train("train.yaml", "out3")
    config = json.loads(json.dumps(CONFIG))
    config["Modelhub"]["FF03"]["pretrain_path"] = "out/FF03-ANN"
    with pytest.raises(ConfigError, match=r"FF03\.pretrain_path: .* layer-stack architectures"):
        resolve_config(config)
