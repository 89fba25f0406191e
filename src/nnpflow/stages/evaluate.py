"""Stage ``evaluate``: one model (all its committee members) on the parts of the split.

Inputs: the merged ``database``, the ``split`` (refused when made for other
structures, :func:`nnpflow.splitting.load_split`), the committee's model files
``models`` and their training ``histories`` (one ``history.csv`` per member).
Outputs (each written atomically, by :mod:`nnpflow.evaluation.model_evaluation`):
``metrics`` (``metrics.json``), ``per_species`` and ``worst_structures`` (CSV)
and, when the rule asks for them, ``parity_energy``, ``parity_forces`` and
``learning_curve`` (PNG).  ``splits``: the parts evaluated (the workflow's
``evaluate.splits``).

``physical_checks`` (the workflow's ``evaluate.physical_checks``,
:class:`nnpflow.evaluation.physical_checks.MDCheckSettings`): short NVE runs of
the smallest test structures (validation, then training structures when the
test part is empty) with the committee's ASE calculator, on this job's torch
threads (``None``: no checks).  Their summary goes into ``metrics.json`` under ``physical_checks``,
their traces into ``md_check`` (PNG) when given, and a run that blows up is
logged as a warning naming the model and the structure.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

from ..errors import ConfigError

log = logging.getLogger(__name__)

PARTS = ("train", "validation", "test")

#: rows per ranking in worst_structures.csv, and points per part in a parity plot
WORST = 20
MAX_POINTS = 100_000


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _log_physical_checks(model_name: str, summary: dict) -> None:
    for r in summary["structures"]:
        spread = (f", committee spread up to {r['committee_spread_max'] * 1000:.3g} meV/atom"
                  if r.get("committee_spread_max") is not None else "")
        line = (f"{r['label']} ({r['n_atoms']} atoms), {r['steps_done']}/{r['steps']} steps: "
                f"drift {_fmt(r['energy_drift'])} eV/atom/ps, largest force "
                f"{_fmt(r['max_force'])} eV/Å, smallest distance {_fmt(r['min_distance'])} Å"
                f"{spread}")
        if r["stable"]:
            log.info("%s NVE check: %s", model_name, line)
        else:
            log.warning("%s NVE check UNSTABLE (%s): %s", model_name, r["failure"], line)
    if summary["unstable"]:
        log.warning("%s: the model blew up in %d of %d NVE runs (%s); do not use it for MD",
                    model_name, len(summary["unstable"]), len(summary["structures"]),
                    ", ".join(summary["unstable"]))


def run(database: str, split: str, models: Sequence[str], histories: Sequence[str],
        metrics: str, per_species: str, worst_structures: str, model_name: str,
        splits: Sequence[str] = PARTS, parity_energy: str | None = None,
        parity_forces: str | None = None, learning_curve: str | None = None,
        threads: int = 1, physical_checks: dict | None = None,
        md_check: str | None = None) -> dict:
    """Evaluate model ``model_name`` (files ``models``) on the ``splits`` parts of
    ``split``; write the outputs given.  Returns the metrics (``metrics.json``)."""
    from ..database import DatabaseReader
    from ..evaluation.model_evaluation import (evaluate_models, remove_stale_plots,
                                              write_evaluation)
    from ..splitting import load_split

    from ..evaluation.physical_checks import MDCheckSettings, md_check_plot
    from ..evaluation.physical_checks import physical_checks as run_physical_checks

    models, histories, splits = list(models), list(histories), list(splits)
    unknown = [s for s in splits if s not in PARTS]
    if unknown or not splits:
        raise ConfigError(f"evaluate.splits: expected some of {', '.join(PARTS)}, got {splits}")
    if len(histories) != len(models):
        raise ConfigError(f"{model_name}: {len(models)} model files but {len(histories)} "
                          "histories")
    with DatabaseReader(database, cache_size=0) as reader:
        parts = load_split(split, reader, n_structures=len(reader))
    evaluation = evaluate_models(models, database, {p: parts.indices[p] for p in splits},
                                 name=model_name)
    evaluation.metrics["split"] = {"path": split, "seed": parts.seed,
                                   "counts": parts.counts, "settings": parts.settings,
                                   "atomic_energies_fit": parts.atomic_energies_fit}
    settings = (MDCheckSettings.from_config(physical_checks) if physical_checks is not None
                else MDCheckSettings(structures=0))
    runs: list[dict] = []
    if settings.structures > 0:
        part = next((p for p in ("test", "validation", "train") if len(parts.indices[p])),
                    "train")
        summary, runs = run_physical_checks(models, database, parts.indices[part], settings,
                                            part=part)
        evaluation.metrics["physical_checks"] = summary
        _log_physical_checks(model_name, summary)
    write_evaluation(evaluation, metrics=metrics, per_species=per_species,
                     worst_structures_csv=worst_structures, parity_energy=parity_energy,
                     parity_forces=parity_forces, learning_curve=learning_curve,
                     histories=histories, worst=WORST, max_points=MAX_POINTS)
    if md_check is not None:    # (after the parity plots, which pay matplotlib's set-up)
        md_check_plot(md_check, runs, title=f"{model_name}: NVE checks")
    for path in remove_stale_plots(os.path.dirname(os.path.abspath(metrics)),
                                   [parity_energy, parity_forces, learning_curve,
                                    md_check]):
        log.info("removed %s (a plot of an earlier evaluation; evaluate.plots is false)", path)
    for part in splits:
        m = evaluation.metrics[part]
        log.info("%s %s (%d structures): energy RMSE %s eV/atom, MAE %s eV/atom; "
                 "force RMSE %s eV/Å, MAE %s eV/Å", model_name, part, m["n_structures"],
                 _fmt(m["energy_rmse_per_atom"]), _fmt(m["energy_mae_per_atom"]),
                 _fmt(m["force_rmse"]), _fmt(m["force_mae"]))
    return evaluation.metrics
