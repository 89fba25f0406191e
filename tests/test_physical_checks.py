"""Physical checks of models: short NVE runs (nnpflow.evaluation.physical_checks).

Sane numbers come from an analytic case: ASE's EMT Cu crystal, whose velocity
Verlet run conserves the total energy and whose nearest-neighbour distance at the
start is a/sqrt(2).  A deliberately broken calculator (a stiff well pulling every
atom to the centre, or one returning NaN) must be flagged; on trained nnpflow
committees the energy spread is checked against the members' own calculators, and
a model with its energies scaled up is flagged by the evaluate stage, its log and
the summary table.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from nnpflow.errors import ConfigError
from test_evaluation_stage import trained  # noqa: F401  (module fixture)
from nnpflow.evaluation.physical_checks import (MDCheckSettings, md_check_plot, nve_check,
                                                nve_checks, physical_checks, pick_structures)


def copper(repeat=2):
    return bulk("Cu", "fcc", a=3.61, cubic=True) * (repeat, repeat, repeat)


def test_emt_copper_run_conserves_energy_and_keeps_its_distances(tmp_path):
    atoms = copper()
    rec = nve_check(EMT(), atoms, MDCheckSettings(steps=200, timestep=0.5, temperature=300),
                    label="Cu32")
    assert rec["stable"] and rec["finite"] and rec["failure"] is None
    assert rec["steps_done"] == 200 and rec["n_atoms"] == 32
    assert len(rec["time_ps"]) == 201 and rec["time_ps"][-1] == pytest.approx(0.1)
    # velocity Verlet with EMT conserves the total energy to well below a meV/atom
    assert abs(rec["energy_drift"]) < 5e-3              # eV/atom/ps
    assert rec["max_energy_deviation"] < 1e-3           # eV/atom
    # the start is the perfect crystal: nearest neighbours a/sqrt(2) apart; thermal
    # motion at 300 K brings them a little closer, never near the 0.5 Å limit
    assert 2.2 < rec["min_distance"] <= 3.61 / math.sqrt(2) + 1e-9
    assert 0.0 < rec["max_force"] < 3.0
    # the same seed gives the same run; the input atoms are not moved
    again = nve_check(EMT(), atoms, MDCheckSettings(steps=200), label="Cu32")
    assert again["total_energy"] == rec["total_energy"]
    assert np.allclose(atoms.get_positions(), copper().get_positions())
    md_check_plot(tmp_path / "md.png", [rec], title="EMT")
    assert (tmp_path / "md.png").read_bytes()[:4] == b"\x89PNG"


class CollapsingWell(Calculator):
    """E = k/2 sum |r - c|^2 towards the cell centre: a 'model' that pulls every atom
    together (stiff enough to fail the force limit at the start)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, k=200.0, nan=False):
        super().__init__()
        self.k, self.nan = k, nan

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.get_positions() - self.atoms.cell.sum(axis=0) / 2
        self.results["energy"] = float("nan") if self.nan else 0.5 * self.k * float((d ** 2).sum())
        self.results["forces"] = -self.k * d


def test_a_blowing_up_model_is_flagged_and_stops_early():
    rec = nve_check(CollapsingWell(k=200.0), copper(), MDCheckSettings(steps=200))
    assert not rec["stable"] and rec["finite"]
    assert rec["failure"].startswith("force") and "limit 50 eV/Å" in rec["failure"]
    assert rec["steps_done"] < 200 and rec["max_force"] > 50
    # a softer well passes the force limit, then crushes the atoms together
    soft = nve_check(CollapsingWell(k=5.0), copper(), MDCheckSettings(
        steps=2000, timestep=2.0, max_force_limit=1e9))
    assert not soft["stable"] and "apart (limit 0.5 Å)" in soft["failure"]
    assert soft["min_distance"] < 0.5
    broken = nve_check(CollapsingWell(nan=True), copper(), MDCheckSettings(steps=10))
    assert not broken["stable"] and not broken["finite"] and broken["steps_done"] == 0
    assert broken["failure"] == "non-finite energy, forces or positions"


def test_smallest_distance_matches_ase_neighbour_list():
    """The dense minimum-image search (small systems, every step) against ASE's
    neighbour list on random skewed cells, partly periodic, one to eight atoms."""
    from ase import Atoms

    from nnpflow.evaluation.physical_checks import _min_distance, _MinDistance
    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 9))
        cell = np.eye(3) * rng.uniform(2.5, 6) + rng.normal(scale=1.2, size=(3, 3))
        atoms = Atoms("Cu" * n, cell=cell, pbc=rng.random(3) < 0.7,
                      scaled_positions=rng.random((n, 3)))
        dense, reference = _MinDistance(atoms)(atoms), _min_distance(atoms)
        assert (dense is None) == (reference is None)
        if dense is not None:
            assert dense == pytest.approx(reference, abs=1e-9)


def test_lockstep_runs_match_runs_one_by_one(trained):
    """Several runs with an NNPCalculator go in lockstep with one batched prediction
    per step; each equals the run made alone (to rounding)."""
    from nnpflow.calculator import NNPCalculator
    from nnpflow.database import DatabaseReader
    from nnpflow.evaluation.physical_checks import _Run, _run_alone
    calc = NNPCalculator(trained["models"])
    with DatabaseReader(trained["db"]) as reader:
        atoms = [reader.structure(i).to_ase() for i in (0, 3, 7)]
    settings = MDCheckSettings(steps=15)
    together = nve_checks(calc, atoms, settings, ["a", "b", "c"])
    for a, rec in zip(atoms, together):
        run = _Run(a, settings, None, True)
        _run_alone(run, calc)
        alone = run.result()
        assert rec["steps_done"] == alone["steps_done"] == 15
        np.testing.assert_allclose(rec["total_energy"], alone["total_energy"], atol=1e-12)
        np.testing.assert_allclose(rec["spread_trace"], alone["spread_trace"], atol=1e-12)
        assert rec["min_distance"] == pytest.approx(alone["min_distance"], abs=1e-12)


def test_settings_and_structure_choice():
    assert MDCheckSettings.from_config({}) == MDCheckSettings()
    assert MDCheckSettings().to_dict()["timestep_fs"] == 0.5
    with pytest.raises(ConfigError, match="unknown key"):
        MDCheckSettings.from_config({"step": 3})
    with pytest.raises(ConfigError, match="steps >= 1"):
        MDCheckSettings.from_config({"steps": 0})
    # smallest first, ties in database order
    assert pick_structures(np.array([8, 2, 5, 2, 9]), [0, 1, 2, 3, 4], 3) == [1, 3, 2]
    assert pick_structures(np.array([8, 2, 5, 2, 9]), [4, 0], 3) == [0, 4]


# ----------------------------------------------------------- trained nnpflow models


def test_committee_checks_report_the_members_spread(trained):
    from nnpflow.calculator import NNPCalculator
    from nnpflow.database import DatabaseReader
    from nnpflow.splitting import load_split
    split = load_split(trained["split"])
    settings = MDCheckSettings(structures=2, steps=20)
    summary, runs = physical_checks(trained["models"], trained["db"], split.test, settings)
    with DatabaseReader(trained["db"]) as reader:
        want = pick_structures(reader.n_atoms, split.test, 2)
        first = reader.structure(want[0])
    assert [r["index"] for r in runs] == want
    assert [s["label"] for s in summary["structures"]] == [r["label"] for r in runs]
    assert "time_ps" not in summary["structures"][0]           # traces stay out of JSON
    assert summary["settings"]["steps"] == 20 and summary["part"] == "test"
    # the spread at the start: the two members' own energies, independently computed
    energies = []
    for model in trained["models"]:
        atoms = first.to_ase()
        atoms.calc = NNPCalculator(model)
        energies.append(atoms.get_potential_energy())
    assert runs[0]["spread_trace"][0] == pytest.approx(np.std(energies) / first.n_atoms,
                                                       rel=1e-6, abs=1e-12)
    assert summary["committee_spread_max"] >= runs[0]["spread_trace"][0]
    assert all(r["finite"] for r in summary["structures"])
    json.dumps(summary)                                         # JSON-ready


def test_evaluate_stage_flags_a_blown_up_model(trained, tmp_path, caplog):
    """A model whose energies are scaled by 1e4 (forces with them) blows up: flagged in
    metrics.json, the evaluation log (a warning) and the summary table."""
    import csv

    from nnpflow.stages import evaluate as evaluate_stage
    from nnpflow.stages import summary as summary_stage
    from nnpflow.training.normalization import EnergyNormalization
    from nnpflow.training.potential import TorchANNPotential
    pot = TorchANNPotential.from_file(trained["models"][0])
    pot.energy_normalization = EnergyNormalization(pot.energy_normalization.shift,
                                                   pot.energy_normalization.scale * 1e4)
    broken = tmp_path / "broken.pt"
    pot.save(broken)
    checks = {"structures": 2, "steps": 30}
    outs = {}
    for name, files in (("good", trained["models"][:1]), ("broken", [str(broken)])):
        with caplog.at_level(logging.INFO, logger="nnpflow.stages.evaluate"):
            metrics = evaluate_stage.run(
                trained["db"], trained["split"], files, trained["histories"][:1],
                metrics=str(tmp_path / f"{name}.json"),
                per_species=str(tmp_path / f"{name}.csv"),
                worst_structures=str(tmp_path / f"{name}_worst.csv"), model_name=name,
                physical_checks=checks, md_check=str(tmp_path / f"{name}.png"))
        outs[name] = metrics["physical_checks"]
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    good, bad = outs["good"], outs["broken"]
    assert good["stable"] and good["unstable"] == [] and len(good["structures"]) == 2
    assert good["max_force"] < 50 and good["min_distance"] > 0.5
    assert not bad["stable"] and len(bad["unstable"]) == 2 and bad["max_force"] > 50
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("broken: the model blew up in 2 of 2 NVE runs" in w for w in warnings)
    assert not any(w.startswith("good") for w in warnings)
    rows = summary_stage.run([str(tmp_path / "good.json"), str(tmp_path / "broken.json")],
                             str(tmp_path / "summary.csv"), ["good", "broken"])
    with open(tmp_path / "summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["md_checks"] for r in table] == ["stable (2 runs)",
                                               "UNSTABLE: " + " ".join(bad["unstable"])]
    assert rows[0]["part"] == "test" and float(table[0]["energy_rmse_per_atom"]) > 0


def test_velocity_verlet_and_start_equal_ases_own():
    """The checks' integrator and Maxwell-Boltzmann start are ASE's arithmetic
    (thermalize_momenta, Stationary, VelocityVerlet) without importing ase.md:
    the same run, step for step, on an EMT Cu/Au alloy (two masses)."""
    from ase import units
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    from nnpflow.evaluation.physical_checks import maxwell_boltzmann_momenta
    atoms = copper()
    atoms.symbols[::3] = "Au"
    settings = MDCheckSettings(steps=40, timestep=1.0, temperature=500, seed=7)
    ours = nve_check(EMT(), atoms, settings)
    ref = atoms.copy()
    thermalize_momenta(ref, temperature_K=500, rng=np.random.default_rng(7))
    Stationary(ref)
    np.testing.assert_allclose(
        maxwell_boltzmann_momenta(atoms.get_masses(), 500, np.random.default_rng(7)),
        ref.get_momenta(), rtol=0, atol=1e-13)
    ref.calc = EMT()
    dyn = VelocityVerlet(ref, timestep=1.0 * units.fs)
    totals, fmax = [], []
    for step in range(41):
        if step:
            dyn.run(1)
        totals.append(ref.get_total_energy() / len(ref))
        fmax.append(np.linalg.norm(ref.get_forces(), axis=1).max())
    assert ours["steps_done"] == 40
    np.testing.assert_allclose(ours["total_energy"], np.array(totals) - totals[0],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["max_force_trace"], fmax, rtol=0, atol=1e-12)
    # zero temperature: no motion at all
    assert not maxwell_boltzmann_momenta(atoms.get_masses(), 0.0,
                                         np.random.default_rng(0)).any()
