"""Stage ``evaluate``: one model (all its committee members) on the parts of the split.

Inputs: the merged ``database``, the ``split`` (refused when made for other
structures, :func:`nnpflow.splitting.load_split`), the committee's model files
``models`` and their training ``histories`` (one ``history.csv`` per member).
Outputs (each written atomically, by :mod:`nnpflow.evaluation.model_evaluation`):
``metrics`` (``metrics.json``), ``per_species`` and ``worst_structures`` (CSV)
and, when the rule asks for them, ``parity_energy``, ``parity_forces`` and
``learning_curve`` (PNG).  ``splits``: the parts evaluated (the workflow's
``evaluate.splits``).
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


def run(database: str, split: str, models: Sequence[str], histories: Sequence[str],
        metrics: str, per_species: str, worst_structures: str, model_name: str,
        splits: Sequence[str] = PARTS, parity_energy: str | None = None,
        parity_forces: str | None = None, learning_curve: str | None = None,
        threads: int = 1) -> dict:
    """Evaluate model ``model_name`` (files ``models``) on the ``splits`` parts of
    ``split``; write the outputs given.  Returns the metrics (``metrics.json``)."""
    from ..database import DatabaseReader
    from ..evaluation.model_evaluation import (evaluate_models, remove_stale_plots,
                                              write_evaluation)
    from ..splitting import load_split

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
                                   "counts": parts.counts, "settings": parts.settings}
    write_evaluation(evaluation, metrics=metrics, per_species=per_species,
                     worst_structures_csv=worst_structures, parity_energy=parity_energy,
                     parity_forces=parity_forces, learning_curve=learning_curve,
                     histories=histories, worst=WORST, max_points=MAX_POINTS)
    for path in remove_stale_plots(os.path.dirname(os.path.abspath(metrics)),
                                   [parity_energy, parity_forces, learning_curve]):
        log.info("removed %s (a plot of an earlier evaluation; evaluate.plots is false)", path)
    for part in splits:
        m = evaluation.metrics[part]
        log.info("%s %s (%d structures): energy RMSE %s eV/atom, MAE %s eV/atom; "
                 "force RMSE %s eV/Å, MAE %s eV/Å", model_name, part, m["n_structures"],
                 _fmt(m["energy_rmse_per_atom"]), _fmt(m["energy_mae_per_atom"]),
                 _fmt(m["force_rmse"]), _fmt(m["force_mae"]))
    return evaluation.metrics
