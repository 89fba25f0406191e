"""Predictions of saved models on a database, the evaluate stage and ``nnpflow evaluate``,
on a tiny EMT database with two tiny trained ANN members (and one SchNet).

Reference values come from other code paths: ``TorchANNPotential.predict`` on the
structures (features computed on the fly, not the persisted ones), the ASE
calculator ``NNPCalculator``, and ``energy_force_metrics`` applied by hand.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from nnpflow.cli import main as cli_main
from nnpflow.database import DatabaseReader, write_database
from nnpflow.errors import ConfigError
from nnpflow.evaluation.metrics import energy_force_metrics
from nnpflow.evaluation.predictions import committee_mean, model_kind, predict_model
from nnpflow.splitting import SplitMismatchError, load_split, make_split, write_split
from nnpflow.stages import evaluate as evaluate_stage
from nnpflow.stages import train as train_stage
from nnpflow.training.potential import TorchANNPotential

from test_ann_data import emt_cells, small_descriptor

ANN = {"architecture": "ann", "hidden": [[5, "tanh"]]}
TRAINING = {"epochs": 2, "batch_size": 4, "learning_rate": 0.01, "schedule": "constant",
            "force_weight": 0.2, "force_fraction": 1.0, "force_sampling": "random",
            "patience": 0, "ema_decay": 0.0, "device": "cpu", "devices": 1, "seed": 5}
PNGS = ("parity_energy", "parity_forces", "learning_curve")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """database.h5 (16 Cu/Au cells, every 5th without forces), split.json (8/4/4) and
    two ANN members trained by the train stage (member_<m>/model.pt, history.csv)."""
    root = tmp_path_factory.mktemp("evaluate")
    db = root / "database.h5"
    write_database(db, emt_cells(16, seed=2, no_forces_every=5), descriptor=small_descriptor(),
                   persist_features=True, persist_force_derivatives=True)
    with DatabaseReader(db) as reader:
        write_split(root / "split.json",
                    make_split(len(reader), 4, 4, 3, reader.structures_fingerprint))
    models, histories = [], []
    for m in range(2):
        folder = root / f"member_{m}"
        train_stage.run(str(db), str(root / "split.json"), str(folder / "model.pt"),
                        str(folder / "history.csv"), "ann", ANN, TRAINING, m)
        models.append(str(folder / "model.pt"))
        histories.append(str(folder / "history.csv"))
    return {"root": root, "db": str(db), "split": str(root / "split.json"),
            "models": models, "histories": histories}


def test_ann_predictions_reuse_persisted_features_and_match_predict(trained):
    idx = [1, 4, 9, 15]
    result = predict_model(trained["models"][0], trained["db"], idx)
    assert model_kind(trained["models"][0]) == "ann"
    with DatabaseReader(trained["db"]) as reader:
        structures = reader.structures(idx)
    pot = TorchANNPotential.from_file(trained["models"][0])
    direct = pot.predict(structures)          # features computed on the fly
    assert result.names == [s.name for s in structures]
    assert np.allclose(result.energies, direct.energies, rtol=1e-5, atol=1e-4)
    assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(result.forces, direct.forces))
    assert np.allclose(result.reference_energies, [s.energy for s in structures])
    # structure 4 (the 5th) has no reference forces, but its forces are still predicted
    assert result.reference_forces[1] is None and result.forces[1].shape == (8, 3)
    assert len(predict_model(trained["models"][0], trained["db"], [])) == 0


def test_stage_writes_every_output_with_committee_metrics(trained, tmp_path):
    out = {name: str(tmp_path / f"{name}.png") for name in PNGS}
    metrics = evaluate_stage.run(
        trained["db"], trained["split"], trained["models"], trained["histories"],
        metrics=str(tmp_path / "metrics.json"), per_species=str(tmp_path / "per_species.csv"),
        worst_structures=str(tmp_path / "worst.csv"), model_name="tiny", **out)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(
        json.dumps(metrics))
    split = load_split(trained["split"])
    assert metrics["parts"] == ["train", "validation", "test"]
    assert metrics["model"] == {"name": "tiny", "kind": "ann", "committee": 2,
                                "files": trained["models"]}
    assert metrics["split"]["counts"] == {"train": 8, "validation": 4, "test": 4}

    # the test part's metrics are those of the members' mean, from energy_force_metrics
    with DatabaseReader(trained["db"]) as reader:
        structures = reader.structures(split.test.tolist())
    members = [TorchANNPotential.from_file(m).predict(structures) for m in trained["models"]]
    energies = np.mean([r.energies for r in members], axis=0)
    n_atoms = np.array([s.n_atoms for s in structures])
    e_ref = np.array([s.energy for s in structures])
    expected = energy_force_metrics(energies, e_ref, n_atoms)
    test = metrics["test"]
    assert test["n_structures"] == 4 and len(test["members"]) == 2
    for key in ("energy_rmse_per_atom", "energy_mae_per_atom", "energy_rmse", "energy_mae"):
        assert test[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    with_f = [k for k, s in enumerate(structures) if s.forces is not None]
    forces = [np.mean([r.forces[k] for r in members], axis=0) for k in with_f]
    expected_f = energy_force_metrics(energies[with_f], e_ref[with_f], n_atoms[with_f], forces,
                                      [structures[k].forces for k in with_f])
    assert test["force_rmse"] == pytest.approx(expected_f["force_rmse"], rel=1e-4)
    assert test["n_structures_with_forces"] == len(with_f)
    spread = np.std([r.energies for r in members], axis=0) / n_atoms
    assert test["energy_std_mean"] == pytest.approx(float(np.mean(spread)), rel=1e-3, abs=1e-7)

    with open(tmp_path / "per_species.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["split"], r["species"]) for r in rows} == {
        (p, s) for p in ("train", "validation", "test") for s in ("Au", "Cu")}
    test_rows = [r for r in rows if r["split"] == "test"]
    assert sum(int(r["n_atoms"]) for r in test_rows) == 8 * len(with_f)
    with open(tmp_path / "worst.csv", newline="") as fh:
        worst = list(csv.DictReader(fh))
    by_energy = [r for r in worst if r["ranked_by"] == "energy"]
    assert len(by_energy) == 16           # every structure, fewer than the 20 asked for
    errors = [abs(float(r["energy_error_per_atom"])) for r in by_energy]
    assert errors == sorted(errors, reverse=True)
    with DatabaseReader(trained["db"]) as reader:
        assert {r["label"] for r in by_energy} == set(reader.names())
    assert len([r for r in worst if r["ranked_by"] == "forces"]) == 13   # 3 lack forces
    for name in PNGS:
        assert Path(out[name]).read_bytes()[:4] == b"\x89PNG"


def test_stage_with_some_parts_and_no_plots(trained, tmp_path):
    metrics = evaluate_stage.run(
        trained["db"], trained["split"], trained["models"][:1], trained["histories"][:1],
        metrics=str(tmp_path / "m.json"), per_species=str(tmp_path / "s.csv"),
        worst_structures=str(tmp_path / "w.csv"), model_name="one", splits=["test"])
    assert metrics["parts"] == ["test"] and "train" not in metrics
    assert "members" not in metrics["test"] and "energy_std_mean" not in metrics["test"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "s.csv", "w.csv"]
    with pytest.raises(ConfigError, match="evaluate.splits"):
        evaluate_stage.run(trained["db"], trained["split"], trained["models"][:1],
                           trained["histories"][:1], metrics=str(tmp_path / "x.json"),
                           per_species=str(tmp_path / "x.csv"),
                           worst_structures=str(tmp_path / "y.csv"), model_name="one",
                           splits=["holdout"])


def test_stage_refuses_a_split_of_other_structures(trained, tmp_path):
    with DatabaseReader(trained["db"]) as reader:
        write_split(tmp_path / "split.json", make_split(len(reader), 4, 4, 3, "0" * 64))
    with pytest.raises(SplitMismatchError, match="made for other structures"):
        evaluate_stage.run(trained["db"], str(tmp_path / "split.json"), trained["models"],
                           trained["histories"], metrics=str(tmp_path / "m.json"),
                           per_species=str(tmp_path / "s.csv"),
                           worst_structures=str(tmp_path / "w.csv"), model_name="x")
    assert not (tmp_path / "m.json").exists()


def test_cli_evaluates_all_structures_or_split_parts(trained, tmp_path, capsys):
    out = tmp_path / "all"
    assert cli_main(["evaluate", trained["models"][0], "--database", trained["db"],
                     "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all" in printed and f"wrote {out}/" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["parts"] == ["all"] and metrics["all"]["n_structures"] == 16
    assert metrics["model"]["name"] == "member_0"
    # history.csv sits next to model.pt: the learning curve is drawn
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["metrics.json", "per_species.csv", "worst_structures.csv",
         *(f"{name}.png" for name in PNGS)])

    out = tmp_path / "split"
    assert cli_main(["evaluate", *trained["models"], "--database", trained["db"],
                     "--split", trained["split"], "--parts", "test", "validation",
                     "--no-plots", "--worst", "2", "--name", "c", "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["parts"] == ["test", "validation"] and metrics["model"]["committee"] == 2
    assert not list(out.glob("*.png"))
    assert len((out / "worst_structures.csv").read_text().splitlines()) == 1 + 2 + 2

    assert cli_main(["evaluate", str(tmp_path / "missing.pt"), "--database", trained["db"],
                     "-o", str(tmp_path / "x")]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err


def test_schnet_predictions_match_the_ase_calculator(trained, tmp_path):
    from nnpflow.calculator import NNPCalculator
    model_cfg = {"architecture": "schnet",
                 "build_params": {"dim_embedding": 8, "num_rbf": 6, "max_Za": 80,
                                  "cutoff_sr": 4.0},
                 "layers": [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
                            {"name": "RandomAtomEmbedding"},
                            {"name": "Core", "params": {"num_interactions": 1,
                                                        "hidden_channels": 8}},
                            {"name": "AtomicAffine"}, {"name": "EnergyReduce"},
                            {"name": "Force"}]}
    with DatabaseReader(trained["db"]) as reader:
        structures = list(reader.iter_structures())
    # the SchNet trainer needs forces on every structure: a database of those that have them
    db = tmp_path / "forces.h5"
    write_database(db, [s for s in structures if s.forces is not None])
    with DatabaseReader(db) as reader:
        write_split(tmp_path / "split.json",
                    make_split(len(reader), 2, 2, 1, reader.structures_fingerprint))
    model = tmp_path / "schnet" / "model.pt"
    train_stage.run(str(db), str(tmp_path / "split.json"), str(model),
                    str(tmp_path / "schnet" / "history.csv"), "schnet", model_cfg,
                    {**TRAINING, "force_weight": 0.5, "epochs": 1}, 0)
    assert model_kind(model) == "layer_stack"
    result = predict_model(model, db, [0, 3, 7])
    with DatabaseReader(db) as reader:
        chosen = reader.structures([0, 3, 7])
    for k, s in enumerate(chosen):
        atoms = s.to_ase()
        atoms.calc = NNPCalculator(str(model))
        assert result.energies[k] == pytest.approx(atoms.get_potential_energy(), rel=1e-4,
                                                   abs=1e-4)
        assert np.allclose(result.forces[k], atoms.get_forces(), atol=1e-4)
        assert result.names[k] == s.name and result.reference_energies[k] == s.energy
    both = committee_mean([result, result])
    assert np.allclose(both.energies, result.energies) and np.all(both.energy_std == 0)


# ---------------------------------------------------------------- issue 13 (part A)

def test_no_plots_removes_the_plots_of_an_earlier_evaluation(trained, tmp_path, capsys):
    """``nnpflow evaluate --no-plots`` into a folder with old plots removes them (no
    stale plot next to new metrics); so does the evaluate stage without plots."""
    out = tmp_path / "ev"
    assert cli_main(["evaluate", trained["models"][0], "--database", trained["db"],
                     "-o", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{n}.png" for n in PNGS)
    (out / "notes.png").write_bytes(b"the user's own file")
    assert cli_main(["evaluate", trained["models"][1], "--database", trained["db"],
                     "-o", str(out), "--no-plots"]) == 0
    assert "a plot of an earlier evaluation" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == ["notes.png"]
    assert json.loads((out / "metrics.json").read_text())["model"]["files"] == \
        [trained["models"][1]]
    # the stage (evaluate.plots: false) does the same in its output folder
    stage = tmp_path / "stage"
    kwargs = dict(metrics=str(stage / "metrics.json"), per_species=str(stage / "s.csv"),
                  worst_structures=str(stage / "w.csv"), model_name="one", splits=["test"])
    evaluate_stage.run(trained["db"], trained["split"], trained["models"][:1],
                       trained["histories"][:1],
                       **{name: str(stage / f"{name}.png") for name in PNGS}, **kwargs)
    assert len(list(stage.glob("*.png"))) == 3
    evaluate_stage.run(trained["db"], trained["split"], trained["models"][:1],
                       trained["histories"][:1], **kwargs)
    assert list(stage.glob("*.png")) == []


def _tick_overlaps(fig) -> list[str]:
    """Tick labels of the figure's axes whose boxes overlap a neighbour's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            boxes = [t.get_window_extent(renderer) for t in labels]
            bad += [f"{a.get_text()} / {b.get_text()}" for (a, ba), (b, bb) in
                    zip(zip(labels, boxes), list(zip(labels, boxes))[1:]) if ba.overlaps(bb)]
    return bad


@pytest.mark.parametrize("centre,spread", [(-1604.3, 4.0), (-1604.3, 0.05), (-5.3, 0.2),
                                           (-21345.6789, 0.02), (-21345.6789, 40.0)])
def test_energy_parity_plot_ticks_are_readable(tmp_path, monkeypatch, centre, spread):
    """Absolute energies per atom (DFT totals: -1604 eV/atom with a spread of a few eV)
    give tick labels that do not overlap and carry no offset to add in one's head (the
    old plots overlapped, or wrote -0.45 with an offset of -1.604e3)."""
    from nnpflow.evaluation import plots
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    rng = np.random.default_rng(0)
    ref = centre + spread * rng.normal(size=200)
    plots.parity_plot(tmp_path / "p.png", {"test": (ref, ref + 0.01 * rng.normal(size=200))},
                      title="energy per atom", unit="eV/atom")
    [fig] = figures
    assert _tick_overlaps(fig) == []
    ax = fig.axes[0]
    assert ax.xaxis.get_offset_text().get_text() == ""
    labels = [float(t.get_text().replace("\u2212", "-")) for t in ax.get_xticklabels()
              if t.get_text()]
    assert min(labels) < centre < max(labels)   # full values, not offsets from centre


def test_fitted_reference_energies_reach_the_metrics_and_the_summary(trained, tmp_path):
    """A split whose training part fitted the reference energies (atomic_energies:
    fit): the evaluation records the fit and the summary table shows it."""
    from nnpflow.stages import summary as summary_stage
    data = json.loads(Path(trained["split"]).read_text())
    data["atomic_energies_fit"] = {"method": "least squares on the training part",
                                   "atomic_energies": {"Cu": -3.75, "Au": -3.2},
                                   "n_structures": 8, "rank": 2, "rmse_per_atom": 0.02}
    split = tmp_path / "split.json"
    split.write_text(json.dumps(data))
    metrics = evaluate_stage.run(trained["db"], str(split), trained["models"][:1],
                                 trained["histories"][:1], metrics=str(tmp_path / "m.json"),
                                 per_species=str(tmp_path / "s.csv"),
                                 worst_structures=str(tmp_path / "w.csv"), model_name="ann",
                                 splits=["test"])
    assert metrics["split"]["atomic_energies_fit"] == data["atomic_energies_fit"]
    rows = summary_stage.run([str(tmp_path / "m.json")], str(tmp_path / "summary.csv"), ["ann"])
    assert rows[0]["fitted_atomic_energies"] == (
        "Au=-3.2 Cu=-3.75 eV (8 training structures, RMSE 0.02 eV/atom)")
