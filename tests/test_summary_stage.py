"""The summary stage (nnpflow.stages.summary): one row per model with its test
errors, its NVE-check verdict and the reference energies fitted for the split."""

from __future__ import annotations

import csv
import json
import logging

from nnpflow.stages import summary as summary_stage


def _metrics(fit=None):
    return {"parts": ["train", "test"], "model": {"kind": "ann", "committee": 2},
            "test": {"n_structures": 4, "energy_rmse_per_atom": 0.0123, "force_rmse": 0.25},
            "split": {"seed": 1, "atomic_energies_fit": fit}}


def test_fitted_reference_energies_are_shown_next_to_the_errors(tmp_path, caplog):
    fit = {"method": "least squares on the training part",
           "atomic_energies": {"Cu": -3.512345678, "Au": -0.25}, "n_structures": 7,
           "rank": 2, "rmse_per_atom": 0.01234}
    paths = []
    for name, data in (("fitted", _metrics(fit)), ("given", _metrics())):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        paths.append(str(path))
    with caplog.at_level(logging.INFO, logger="nnpflow.stages.summary"):
        rows = summary_stage.run(paths, str(tmp_path / "summary.csv"), ["fitted", "given"])
    line = "Au=-0.25 Cu=-3.51235 eV (7 training structures, RMSE 0.0123 eV/atom)"
    assert [r["fitted_atomic_energies"] for r in rows] == [line, ""]
    with open(tmp_path / "summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["fitted_atomic_energies"] for r in table] == [line, ""]
    assert table[0]["md_checks"] == "not run" and table[0]["energy_rmse_per_atom"] == "0.0123"
    assert any(r.getMessage() == f"reference energies fitted on the training part: {line}"
               for r in caplog.records)
