"""Evaluation library on hand-made predictions: metrics per part, committee mean and
spread, per-species and worst-structure tables, CSV files, plots.

Every expected value is worked out by hand from the inputs below, independently of
nnpflow.evaluation.metrics.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from nnpflow.evaluation.plots import (energy_parity_plot, force_parity_plot,
                                      learning_curve_plot, parity_plot)
from nnpflow.evaluation.predictions import committee_mean
from nnpflow.evaluation.tables import (PER_SPECIES_COLUMNS, WORST_COLUMNS, part_metrics,
                                       per_species_rows, structure_errors, worst_structures,
                                       write_csv)
from nnpflow.training.potential import PredictionResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hand_made() -> PredictionResult:
    """Three structures: s0 (Cu, Au) and s1 (Cu, Cu, Au) with energies and forces,
    s2 (Au) with an energy but no reference forces.

    energy errors (pred - ref): s0 +1.0 eV over 2 atoms, s1 -0.6 eV over 3 atoms,
    s2 +0.1 eV over 1 atom -> per atom +0.5, -0.2, +0.1 eV/atom.
    force errors: s0 Cu (0.3, 0, 0), Au (0, -0.4, 0); s1 Cu (0.1, 0.1, 0.1),
    Cu (0, 0, 0), Au (0, 0, 0.2).
    """
    ref_f0 = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    ref_f1 = np.array([[0.5, 0.5, 0.0], [0.0, -0.5, 0.0], [-0.5, 0.0, 0.0]])
    err_f0 = np.array([[0.3, 0.0, 0.0], [0.0, -0.4, 0.0]])
    err_f1 = np.array([[0.1, 0.1, 0.1], [0.0, 0.0, 0.0], [0.0, 0.0, 0.2]])
    return PredictionResult(
        energies=np.array([-9.0, -15.6, -3.9]), n_atoms=np.array([2, 3, 1]),
        forces=[ref_f0 + err_f0, ref_f1 + err_f1, np.zeros((1, 3))],
        names=["a.xsf", "b.tar:m1.xsf", "c.xsf"],
        species=[["Cu", "Au"], ["Cu", "Cu", "Au"], ["Au"]],
        reference_energies=np.array([-10.0, -15.0, -4.0]),
        reference_forces=[ref_f0, ref_f1, None])


def test_part_metrics_against_hand_computed_values():
    m = part_metrics(hand_made())
    per_atom = np.array([0.5, -0.2, 0.1])
    assert m["n_structures"] == 3 and m["n_structures_with_energy"] == 3
    assert m["n_structures_with_forces"] == 2 and m["n_force_components"] == 15
    assert m["energy_rmse_per_atom"] == pytest.approx(math.sqrt(np.mean(per_atom ** 2)))
    assert m["energy_mae_per_atom"] == pytest.approx((0.5 + 0.2 + 0.1) / 3)
    assert m["energy_rmse"] == pytest.approx(math.sqrt((1.0 + 0.36 + 0.01) / 3))
    assert m["energy_mae"] == pytest.approx((1.0 + 0.6 + 0.1) / 3)
    # over all 15 components of s0 and s1: squares 0.09 + 0.16 + 3 * 0.01 + 0.04
    assert m["force_rmse"] == pytest.approx(math.sqrt(0.32 / 15))
    assert m["force_mae"] == pytest.approx((0.3 + 0.4 + 0.3 + 0.2) / 15)
    # Cu: 3 atoms (s0 Cu, s1 Cu, Cu) -> 9 components; Au: 2 atoms -> 6 components
    assert m["per_species"]["Cu"] == pytest.approx(
        {"n_atoms": 3, "force_rmse": math.sqrt((0.09 + 0.03) / 9), "force_mae": 0.6 / 9})
    assert m["per_species"]["Au"] == pytest.approx(
        {"n_atoms": 2, "force_rmse": math.sqrt((0.16 + 0.04) / 6), "force_mae": 0.6 / 6})
    assert "energy_std_mean" not in m  # a single model has no spread


def test_part_metrics_of_unlabelled_and_empty_parts():
    r = hand_made()
    r.reference_energies = np.array([np.nan, -15.0, np.nan])
    m = part_metrics(r)
    assert m["n_structures"] == 3 and m["n_structures_with_energy"] == 1
    assert m["energy_rmse_per_atom"] == pytest.approx(0.2)
    r.forces = None
    assert part_metrics(r)["force_rmse"] is None
    empty = PredictionResult(energies=np.zeros(0), forces=[], n_atoms=np.zeros(0, int),
                             names=[], species=[], reference_energies=np.zeros(0),
                             reference_forces=[])
    m = part_metrics(empty)
    assert m["n_structures"] == 0 and m["energy_rmse_per_atom"] is None
    assert m["force_rmse"] is None and m["per_species"] == {}


def test_committee_mean_and_spread():
    a, b = hand_made(), hand_made()
    b.energies = a.energies + np.array([2.0, -1.2, 0.2])   # mean shifts by half of it
    b.forces = [f + 0.2 for f in a.forces]
    c = committee_mean([a, b])
    assert np.allclose(c.energies, a.energies + np.array([1.0, -0.6, 0.1]))
    # population std of two values is half their difference
    assert np.allclose(c.energy_std, [1.0, 0.6, 0.1])
    assert np.allclose(c.member_energies, [a.energies, b.energies])
    assert all(np.allclose(f, fa + 0.1) and np.allclose(s, 0.1)
               for f, fa, s in zip(c.forces, a.forces, c.forces_std))
    m = part_metrics(c)
    # the mean prediction's energy errors per atom: (1 + 1)/2, (-0.6 - 0.6)/3, (0.1 + 0.1)/1
    assert m["energy_mae_per_atom"] == pytest.approx((1.0 + 0.4 + 0.2) / 3)
    assert m["energy_std_mean"] == pytest.approx((1.0 / 2 + 0.6 / 3 + 0.1 / 1) / 3)
    assert m["force_std_mean"] == pytest.approx(0.1)
    one = committee_mean([a])
    assert np.array_equal(one.energies, a.energies) and np.all(one.energy_std == 0)
    b.names = ["x", "y", "z"]
    with pytest.raises(ValueError, match="member 1 predicted other structures"):
        committee_mean([a, b])


def test_structure_errors_and_worst_structures():
    rows = structure_errors(hand_made(), "test")
    assert [r["label"] for r in rows] == ["a.xsf", "b.tar:m1.xsf", "c.xsf"]
    assert [r["formula"] for r in rows] == ["AuCu", "AuCu2", "Au"]
    assert [r["energy_error_per_atom"] for r in rows] == pytest.approx([0.5, -0.2, 0.1])
    assert rows[0]["energy_error"] == pytest.approx(1.0)
    assert rows[0]["force_rmse"] == pytest.approx(math.sqrt(0.25 / 6))
    assert rows[0]["force_max_error"] == pytest.approx(0.4)
    assert rows[1]["force_max_error"] == pytest.approx(0.2)   # |(0, 0, 0.2)| > |(.1, .1, .1)|
    assert rows[2]["force_rmse"] is None and rows[2]["energy_std"] is None

    worst = worst_structures(rows, n=2)
    assert [(w["ranked_by"], w["rank"], w["label"]) for w in worst] == [
        ("energy", 1, "a.xsf"), ("energy", 2, "b.tar:m1.xsf"),     # |0.5| > |-0.2| > 0.1
        ("forces", 1, "a.xsf"), ("forces", 2, "b.tar:m1.xsf")]     # c.xsf has no forces
    assert len(worst_structures(rows, n=10)) == 3 + 2
    with pytest.raises(ValueError):
        worst_structures(rows, n=0)


def test_per_species_rows_and_csv_round_trip(tmp_path):
    metrics = {"train": part_metrics(hand_made()), "test": part_metrics(hand_made())}
    rows = per_species_rows(metrics)
    assert [(r["split"], r["species"]) for r in rows] == [
        ("train", "Au"), ("train", "Cu"), ("test", "Au"), ("test", "Cu")]
    write_csv(tmp_path / "per_species.csv", rows, PER_SPECIES_COLUMNS)
    with open(tmp_path / "per_species.csv", newline="") as fh:
        read = list(csv.DictReader(fh))
    assert [tuple(r) for r in read] == [PER_SPECIES_COLUMNS] * 4
    assert float(read[1]["force_rmse"]) == rows[1]["force_rmse"]   # full precision
    assert read[0]["n_atoms"] == "2"

    worst = worst_structures(structure_errors(hand_made(), "test"), 5)
    write_csv(tmp_path / "worst.csv", worst, WORST_COLUMNS)
    with open(tmp_path / "worst.csv", newline="") as fh:
        read = list(csv.DictReader(fh))
    assert read[2]["label"] == "c.xsf" and read[2]["force_rmse"] == ""   # None -> empty
    with pytest.raises(ValueError, match="outside"):
        write_csv(tmp_path / "bad.csv", [{"split": "x", "extra": 1}], PER_SPECIES_COLUMNS)
    assert not (tmp_path / "bad.csv").exists()


def _png_shape(path) -> tuple:
    from matplotlib.image import imread
    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(path).shape


def test_parity_plots_draw_every_point_and_subsample_large_parts(tmp_path):
    rng = np.random.default_rng(0)
    series = {"train": (rng.normal(size=500), rng.normal(size=500)),
              "validation": (rng.normal(size=40), rng.normal(size=40)),
              "test": (np.zeros(0), np.zeros(0))}
    drawn = parity_plot(tmp_path / "p.png", series, title="t", unit="eV", max_points=100)
    assert drawn == {"train": 100, "validation": 40, "test": 0}
    assert _png_shape(tmp_path / "p.png")[2] in (3, 4)
    with pytest.raises(ValueError, match="3 reference and 2 predicted"):
        parity_plot(tmp_path / "q.png", {"x": (np.zeros(3), np.zeros(2))}, title="t", unit="eV")
    assert not (tmp_path / "q.png").exists()

    results = {"train": hand_made(), "test": hand_made()}
    # energies: one point per structure with a reference energy; forces: 3 per atom
    # of the structures with reference forces (s0 and s1: 5 atoms)
    assert energy_parity_plot(tmp_path / "e.png", results) == {"train": 3, "test": 3}
    assert force_parity_plot(tmp_path / "f.png", results) == {"train": 15, "test": 15}
    unlabelled = hand_made()
    unlabelled.reference_forces = [None, None, None]
    assert force_parity_plot(tmp_path / "none.png", {"all": unlabelled}) == {"all": 0}
    for name in ("e.png", "f.png", "none.png"):
        assert _png_shape(tmp_path / name)[0] > 100


def test_learning_curve_lines(tmp_path):
    ann = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_energy_rmse": 0.1 / e,
            "val_force_rmse": 0.5 / e, "lr": 1e-3} for e in range(1, 6)]
    no_val = [{"epoch": e, "train_loss": 1.0 / e} for e in range(1, 4)]
    drawn = learning_curve_plot(tmp_path / "lc.png", [ann, ann])
    assert drawn == {"loss": 4, "validation": 4}   # 2 members x (train, val) and 2 RMSEs
    assert learning_curve_plot(tmp_path / "lc1.png", [no_val]) == {"loss": 1, "validation": 0}
    with pytest.raises(ValueError, match="1 labels for 2 histories"):
        learning_curve_plot(tmp_path / "x.png", [ann, ann], labels=["a"])
    assert _png_shape(tmp_path / "lc.png")[1] > _png_shape(tmp_path / "lc.png")[0]
