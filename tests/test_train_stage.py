"""The workflow's train stage on a tiny database and split: outputs, committee
seeds, split fingerprint check, config errors, resume after SIGTERM, restart
after a settings change, and the SchNet path."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from nnpflow.database import DatabaseReader, write_database
from nnpflow.errors import ConfigError
from nnpflow.splitting import SplitMismatchError, make_split, write_split
from nnpflow.stages.train import run
from nnpflow.training.potential import TorchANNPotential, read_history_csv

from test_ann_data import emt_cells, small_descriptor

TESTS = Path(__file__).resolve().parent
ANN = {"architecture": "ann", "hidden": [[6, "tanh"], [6, "tanh"]], "committee": 2,
       "active": True}
TRAINING = {"epochs": 3, "batch_size": 4, "learning_rate": 0.01, "schedule": "plateau",
            "force_weight": 0.2, "force_fraction": 1.0, "force_sampling": "random",
            "patience": 0, "ema_decay": 0.0, "device": "cpu", "devices": 1, "seed": 7}


def make_inputs(folder: Path) -> tuple[Path, Path]:
    db = folder / "database.h5"
    write_database(db, emt_cells(20, seed=2, no_forces_every=6), descriptor=small_descriptor(),
                   persist_features=True, persist_force_derivatives=True)
    with DatabaseReader(db) as reader:
        split = make_split(len(reader), 0.2, 0.1, 3, reader.structures_fingerprint)
    write_split(folder / "split.json", split)
    return db, folder / "split.json"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("stage"))


def train(inputs, out: Path, member=0, model_cfg=ANN, training=TRAINING, **kw):
    db, split = inputs
    return run(str(db), str(split), str(out / "model.pt"), str(out / "history.csv"), "ann",
               model_cfg, training, member, **kw)


def test_stage_writes_model_and_history(inputs, tmp_path):
    summary = train(inputs, tmp_path / "m0")
    assert summary["n_train"] == 14 and summary["n_validation"] == 4
    assert summary["epochs"] == 3 and summary["processes"] == 1
    pot = TorchANNPotential.from_file(tmp_path / "m0" / "model.pt")
    rows = read_history_csv(tmp_path / "m0" / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows == [{k: v for k, v in r.items()} for r in pot.history]
    assert {"train_loss", "val_loss", "val_energy_rmse", "val_force_rmse", "lr"} <= set(rows[0])
    assert pot.training_info["config"]["seed"] == 7
    assert (tmp_path / "m0" / "checkpoints" / "checkpoint_last.pt").is_file()
    # the model carries the database's descriptor and predicts
    with DatabaseReader(inputs[0]) as reader:
        assert pot.descriptor.config() == reader.descriptor().config()
        s = reader.structure(0)
    assert np.isfinite(pot.predict([s]).energies[0])
    # member 1: seed + 1, same split, other weights
    train(inputs, tmp_path / "m1", member=1)
    other = TorchANNPotential.from_file(tmp_path / "m1" / "model.pt")
    assert other.training_info["config"]["seed"] == 8
    assert other.training_info["data"] == pot.training_info["data"]
    assert not torch.equal(other.net.nets[0][0].weight, pot.net.nets[0][0].weight)


def test_split_of_other_structures_is_refused(inputs, tmp_path):
    db, _ = inputs
    with DatabaseReader(db) as reader:
        wrong = make_split(len(reader), 0.2, 0.1, 3, "0" * 64)
    write_split(tmp_path / "split.json", wrong)
    with pytest.raises(SplitMismatchError, match="made for other structures"):
        run(str(db), str(tmp_path / "split.json"), str(tmp_path / "model.pt"),
            str(tmp_path / "history.csv"), "ann", ANN, TRAINING, 0)
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "history.csv").exists()


@pytest.mark.parametrize("model_cfg, training, member, message", [
    (ANN, {**TRAINING, "epoch": 3}, 0, r"training: unknown key\(s\) epoch"),
    ({**ANN, "training": {"learning_rat": 1}}, TRAINING, 0, "models.training: unknown key"),
    (ANN, TRAINING, 2, "member 2 but the committee has 2"),
    ({**ANN, "layers": []}, TRAINING, 0, "do not apply to architecture ann"),
    ({"architecture": "mlp"}, TRAINING, 0, "expected ann or schnet"),
    ({"architecture": "ann", "hidden": []}, TRAINING, 0, "hidden: expected"),
    (ANN, {**TRAINING, "device": "gpu"}, 0, "training.device"),
    (ANN, {**TRAINING, "force_weight": 0.0, "force_fraction": 0.5}, 0, "force_weight=0"),
])
def test_stage_config_errors(inputs, tmp_path, model_cfg, training, member, message):
    with pytest.raises(ConfigError, match=message):
        train(inputs, tmp_path, member, model_cfg, training)
    assert not (tmp_path / "model.pt").exists()


RUNNER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    import nnpflow.training.potential as potential
    from nnpflow.stages.train import run
    from nnpflow.training.interrupt import TrainingInterrupted
    from test_train_stage import ANN, TRAINING
    original = potential.TorchANNPotential.train

    def train(self, *args, **kwargs):   # SIGTERM after epoch 2, step 1
        def hook(epoch, step):
            if (epoch, step) == (1, 0):
                os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, on_step=hook, **kwargs)

    potential.TorchANNPotential.train = train
    out = sys.argv[4]
    try:
        run(sys.argv[2], sys.argv[3], out + "/model.pt", out + "/history.csv", "ann", ANN,
            TRAINING, 0)
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        sys.exit(exc.exit_status)
    """)


def test_rerun_after_sigterm_resumes_exactly(inputs, tmp_path, caplog):
    db, split = inputs
    train(inputs, tmp_path / "full")
    out = tmp_path / "stopped"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(TESTS), str(db), str(split),
                           str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "stopped by SIGTERM at epoch 2, step 1/4" in proc.stderr
    assert not (out / "model.pt").exists()
    with caplog.at_level(logging.INFO, logger="nnpflow"):
        train(inputs, out)
    assert "resumed from" in caplog.text
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert len(read_history_csv(out / "history.csv")) == 3


def test_changed_settings_start_over(inputs, tmp_path, caplog):
    train(inputs, tmp_path / "a")
    changed = {**TRAINING, "learning_rate": 0.02}
    with caplog.at_level(logging.WARNING):
        train(inputs, tmp_path / "a", training=changed)
    assert "belongs to other settings or data" in caplog.text
    assert "config.method.mu: 0.01 -> 0.02" in caplog.text
    train(inputs, tmp_path / "b", training=changed)
    a = TorchANNPotential.from_file(tmp_path / "a" / "model.pt")
    b = TorchANNPotential.from_file(tmp_path / "b" / "model.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.net.state_dict().values(),
                                                  b.net.state_dict().values()))
    # more epochs with the plateau schedule: the finished run continues
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nnpflow"):
        train(inputs, tmp_path / "b", training={**changed, "epochs": 4})
    assert "resumed from" in caplog.text
    assert len(read_history_csv(tmp_path / "b" / "history.csv")) == 4


def test_schnet_models_train_through_the_layer_stack_trainer(inputs, tmp_path):
    from nnpflow.models.model_file import load_layer_stack
    model_cfg = {"architecture": "schnet",
                 "build_params": {"dim_embedding": 8, "num_rbf": 6, "max_Za": 80,
                                  "cutoff_sr": 4.0},
                 "layers": [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
                            {"name": "RandomAtomEmbedding"},
                            {"name": "Core", "params": {"num_interactions": 1,
                                                        "hidden_channels": 8}},
                            {"name": "AtomicAffine"}, {"name": "EnergyReduce"},
                            {"name": "Force"}]}
    training = {**TRAINING, "force_weight": 0.0, "epochs": 2}
    summary = train(inputs, tmp_path, model_cfg=model_cfg, training=training)
    assert summary["architecture"] == "schnet" and summary["n_train"] == 14
    model, meta = load_layer_stack(tmp_path / "model.pt")
    assert "E" in model.outputs
    assert len(read_history_csv(tmp_path / "history.csv")) == 2
