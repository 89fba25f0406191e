"""Issue 13 (part A): training progress is visible.  The train stage logs one line
per epoch (epoch, losses, validation errors, seconds) to the job's log while it runs,
for both trainers, and the README says where to watch it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from nnpflow.database import DatabaseReader, write_database
from nnpflow.splitting import make_split, write_split
from nnpflow.stages.train import run as train_stage

from test_ann_data import emt_cells, small_descriptor

REPO = Path(__file__).resolve().parents[1]
TRAINING = {"epochs": 3, "batch_size": 4, "learning_rate": 0.01, "schedule": "constant",
            "patience": 0, "device": "cpu", "seed": 1}
SCHNET = {"architecture": "schnet",
          "build_params": {"dim_embedding": 4, "num_rbf": 4, "max_Za": 80, "cutoff_sr": 4.0},
          "layers": [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
                     {"name": "RandomAtomEmbedding"},
                     {"name": "Core", "params": {"num_interactions": 1, "hidden_channels": 4}},
                     {"name": "AtomicAffine"}, {"name": "EnergyReduce"}, {"name": "Force"}]}


def test_the_train_stage_logs_one_line_per_epoch(tmp_path, caplog):
    db = tmp_path / "db.h5"
    write_database(db, emt_cells(8, seed=1), descriptor=small_descriptor(),
                   persist_features=True, persist_force_derivatives=True)
    with DatabaseReader(db) as reader:
        write_split(tmp_path / "split.json",
                    make_split(len(reader), 2, 1, 0, reader.structures_fingerprint))
    for name, model in (("ann", {"architecture": "ann", "hidden": [[4, "tanh"]]}),
                        ("schnet", SCHNET)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nnpflow"):
            train_stage(str(db), str(tmp_path / "split.json"), str(tmp_path / name / "model.pt"),
                        str(tmp_path / name / "history.csv"), name, model, TRAINING, 0)
        lines = [r.getMessage() for r in caplog.records if re.search(r"epoch \d+/3", r.getMessage())
                 and "train loss" in r.getMessage()]
        assert len(lines) == 3, (name, caplog.text)
        for k, line in enumerate(lines, start=1):
            assert f"epoch {k}/3" in line and "val loss" in line, line
            assert re.search(r"; \d+\.\d+ s$", line), line          # seconds of the epoch
        if name == "ann":  # validation errors with units
            assert re.search(r"val loss \S+ \(E \S+, F \S+\)", lines[0]), lines[0]
        else:
            assert "rmse_E" in lines[0] or "val loss" in lines[0]


def test_readme_says_where_to_watch_training():
    text = (REPO / "README.md").read_text()
    assert "tail -f results/logs/train/ann/member_0.log" in text
