"""Stage ``summary``: one table of every evaluated model for the report.

Inputs ``metrics``: the evaluate stage's ``metrics.json`` of each model (in the
order of ``model_names``).  Output ``summary`` (CSV, atomic): per model its
kind and committee size, the errors on the test part (or the last part
evaluated), and the verdict of the NVE checks -- ``stable``, ``UNSTABLE:
<structures>`` for a model that blew up, or ``not run`` -- with the worst drift,
largest force and smallest distance seen, and the per-species reference energies
fitted on the training part (``atomic_energies: fit``; the split's fit, which every
model applies) -- e.g. ``Au=-0.01234 Cu=-3.5678 eV (7 training structures, RMSE
0.0123 eV/atom)`` -- or an empty cell.  Snakemake's report shows it under
"Summary", so a model that explodes in MD is flagged next to its errors.
"""

from __future__ import annotations

import json
import logging
from typing import Sequence

from ..errors import InputError
from ..evaluation.tables import write_csv

log = logging.getLogger(__name__)

COLUMNS = ("model", "kind", "committee", "part", "n_structures", "energy_rmse_per_atom",
           "force_rmse", "md_checks", "md_energy_drift", "md_max_force", "md_min_distance",
           "fitted_atomic_energies")


def _g(value) -> str:
    return "" if value is None else f"{value:.5g}"


def fitted_references(metrics: dict) -> str:
    """The reference energies fitted for the split (``metrics["split"]
    ["atomic_energies_fit"]``) as one line, species in alphabetical order, or ""."""
    fit = (metrics.get("split") or {}).get("atomic_energies_fit")
    if not fit or not fit.get("atomic_energies"):
        return ""
    refs = " ".join(f"{s}={float(e):.6g}" for s, e in sorted(fit["atomic_energies"].items()))
    about = []
    if fit.get("n_structures") is not None:
        about.append(f"{fit['n_structures']} training structures")
    if fit.get("rmse_per_atom") is not None:
        about.append(f"RMSE {float(fit['rmse_per_atom']):.3g} eV/atom")
    return f"{refs} eV" + (f" ({', '.join(about)})" if about else "")


def summary_row(name: str, metrics: dict) -> dict:
    """The summary row of one model's ``metrics.json`` content."""
    parts = list(metrics.get("parts") or [])
    part = "test" if "test" in parts else (parts[-1] if parts else "")
    m = metrics.get(part) or {}
    checks = metrics.get("physical_checks")
    if checks is None:
        verdict = "not run"
    elif checks["unstable"]:
        verdict = "UNSTABLE: " + " ".join(checks["unstable"])
    else:
        verdict = f"stable ({len(checks['structures'])} runs)"
    return {"model": name, "kind": metrics.get("model", {}).get("kind", ""),
            "committee": metrics.get("model", {}).get("committee", ""), "part": part,
            "n_structures": m.get("n_structures", ""),
            "energy_rmse_per_atom": _g(m.get("energy_rmse_per_atom")),
            "force_rmse": _g(m.get("force_rmse")), "md_checks": verdict,
            "md_energy_drift": _g((checks or {}).get("worst_energy_drift")),
            "md_max_force": _g((checks or {}).get("max_force")),
            "md_min_distance": _g((checks or {}).get("min_distance")),
            "fitted_atomic_energies": fitted_references(metrics)}


def run(metrics: Sequence[str], summary: str, model_names: Sequence[str]) -> list[dict]:
    """Write ``summary`` from the ``metrics`` files of ``model_names``."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if len(metrics) != len(model_names):
        raise InputError(f"{len(metrics)} metrics files for {len(model_names)} models",
                         source=str(summary))
    rows = []
    for name, path in zip(model_names, metrics):
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the metrics: {exc}", source=str(path)) from None
        rows.append(summary_row(name, data))
    write_csv(summary, rows, COLUMNS)
    for row in rows:
        (log.warning if row["md_checks"].startswith("UNSTABLE") else log.info)(
            "%s: %s energy RMSE %s eV/atom, force RMSE %s eV/Å; NVE checks %s", row["model"],
            row["part"], row["energy_rmse_per_atom"] or "n/a", row["force_rmse"] or "n/a",
            row["md_checks"])
    fitted = {row["fitted_atomic_energies"] for row in rows} - {""}
    for line in sorted(fitted):
        log.info("reference energies fitted on the training part: %s", line)
    return rows
