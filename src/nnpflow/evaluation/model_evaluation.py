"""Evaluate a model (one file, or a committee of files) on parts of a database,
and write the evaluation's files.

:func:`evaluate_models` predicts every part (e.g. ``train``, ``validation``,
``test`` of a split) with every member (:mod:`nnpflow.evaluation.predictions`),
forms the committee's mean prediction and computes the metrics
(:mod:`nnpflow.evaluation.tables`).  :func:`write_evaluation` writes any of:

* ``metrics.json`` -- per part: ``energy_rmse_per_atom``, ``energy_mae_per_atom``
  (eV/atom), ``energy_rmse``, ``energy_mae`` (eV), ``force_rmse``, ``force_mae``
  (eV/Å over all force components), ``n_structures`` and the label counts,
  ``per_species`` force errors; for a committee the metrics are those of the mean
  prediction, with ``energy_std_mean`` (eV/atom) and ``force_std_mean`` (eV/Å),
  the mean spread of the members, and ``members``, each member's own metrics;
  plus ``model``, ``database``, ``parts`` and ``units``;
* ``per_species.csv`` -- force errors per element and part;
* ``worst_structures.csv`` -- the structures with the largest errors, with
  their source labels;
* energy and force parity plots and the learning curve (PNG).

The workflow's evaluate stage and ``nnpflow evaluate`` both call these two
functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .predictions import committee_mean, model_kind, predict_model
from .tables import (METRIC_KEYS, PER_SPECIES_COLUMNS, WORST_COLUMNS, part_metrics,
                     per_species_rows, structure_errors, worst_structures, write_csv)

__all__ = ["UNITS", "PLOT_FILES", "ModelEvaluation", "evaluate_models", "write_evaluation",
           "remove_stale_plots"]

#: the plots' file names in an evaluation folder (the workflow's and nnpflow evaluate's)
PLOT_FILES = {"parity_energy": "parity_energy.png", "parity_forces": "parity_forces.png",
              "learning_curve": "learning_curve.png", "md_check": "md_check.png"}

#: units of the metrics in metrics.json
UNITS = {"energy_rmse_per_atom": "eV/atom", "energy_mae_per_atom": "eV/atom",
         "energy_rmse": "eV", "energy_mae": "eV", "force_rmse": "eV/Å", "force_mae": "eV/Å",
         "energy_std_mean": "eV/atom", "force_std_mean": "eV/Å"}


@dataclass
class ModelEvaluation:
    """Predictions and metrics of one model on named parts of a database.

    ``predictions[part]`` is the model's prediction (the committee's mean, with
    its spread, when there are several members); ``member_predictions[part]``
    holds each member's own; ``metrics`` is the JSON-ready content of
    ``metrics.json`` (callers may add entries before writing it).
    """

    model_files: list[str]
    kind: str
    parts: dict[str, np.ndarray]
    predictions: dict[str, Any]
    member_predictions: dict[str, list]
    metrics: dict = field(default_factory=dict)

    @property
    def committee(self) -> int:
        return len(self.model_files)


def _database_summary(database: str | os.PathLike) -> dict:
    from ..database import DatabaseReader
    with DatabaseReader(database, cache_size=0) as reader:
        return {"path": os.fspath(database), "n_structures": len(reader),
                "fingerprint": reader.fingerprint,
                "structures_fingerprint": reader.structures_fingerprint}


def evaluate_models(model_files: Sequence[str | os.PathLike], database: str | os.PathLike,
                    parts: Mapping[str, Sequence[int] | np.ndarray], *,
                    name: str | None = None, batch_size: int = 64,
                    show_progress: bool = False) -> ModelEvaluation:
    """Predict the structures of each part (``{part: database indices}``) with
    each model file (several files are a committee: all ANN or all layer-stack
    models) and compute the metrics (see the module docstring)."""
    import logging
    log = logging.getLogger(__name__)
    files = [os.fspath(p) for p in model_files]
    if not files:
        raise ValueError("no model files to evaluate")
    kinds = {p: model_kind(p) for p in files}
    if len(set(kinds.values())) > 1:
        raise ValueError(f"a committee mixes model kinds: {kinds}")
    kind = kinds[files[0]]
    index = {p: np.asarray(ix, dtype=np.int64).reshape(-1) for p, ix in parts.items()}
    predictions, members = {}, {}
    for part, ix in index.items():
        members[part] = [predict_model(f, database, ix, batch_size=batch_size,
                                       show_progress=show_progress) for f in files]
        predictions[part] = (members[part][0] if len(files) == 1
                             else committee_mean(members[part]))
        log.info("predicted %d %s structures with %d model file(s)", len(ix), part, len(files))
    metrics: dict[str, Any] = {
        "model": {"name": name, "kind": kind, "committee": len(files), "files": files},
        "database": _database_summary(database),
        "parts": list(index),
        "units": dict(UNITS),
    }
    for part in index:
        m = part_metrics(predictions[part])
        if len(files) > 1:
            m["members"] = [{k: v for k, v in part_metrics(r).items() if k in METRIC_KEYS}
                            for r in members[part]]
        metrics[part] = m
    return ModelEvaluation(model_files=files, kind=kind, parts=index, predictions=predictions,
                           member_predictions=members, metrics=metrics)


def write_evaluation(evaluation: ModelEvaluation, *, metrics: str | None = None,
                     per_species: str | None = None, worst_structures_csv: str | None = None,
                     parity_energy: str | None = None, parity_forces: str | None = None,
                     learning_curve: str | None = None,
                     histories: Sequence[str | os.PathLike] | None = None, worst: int = 20,
                     max_points: int = 100_000) -> dict:
    """Write the files given (each atomically); see the module docstring.

    ``learning_curve`` needs ``histories``: one ``history.csv`` per model file.
    ``worst``: rows per ranking in the worst-structures table; ``max_points``:
    points per part in the parity plots.  Returns what the plots drew
    (``{"parity_energy": {part: points}, ...}``).
    """
    from ..safe_write import write_json
    drawn: dict[str, Any] = {}
    if metrics is not None:
        write_json(metrics, evaluation.metrics)
    if per_species is not None:
        rows = per_species_rows({p: evaluation.metrics[p] for p in evaluation.parts})
        write_csv(per_species, rows, PER_SPECIES_COLUMNS)
    if worst_structures_csv is not None:
        rows = [row for part, result in evaluation.predictions.items()
                for row in structure_errors(result, part)]
        write_csv(worst_structures_csv, worst_structures(rows, worst), WORST_COLUMNS)
    if parity_energy is not None or parity_forces is not None:
        from .plots import energy_parity_plot, force_parity_plot
        name = evaluation.metrics.get("model", {}).get("name")
        what = f"{name}: " if name else ""
        if evaluation.committee > 1:
            what += f"committee mean of {evaluation.committee}, "
        if parity_energy is not None:
            drawn["parity_energy"] = energy_parity_plot(
                parity_energy, evaluation.predictions, max_points=max_points,
                title=f"{what}energy per atom")
        if parity_forces is not None:
            drawn["parity_forces"] = force_parity_plot(
                parity_forces, evaluation.predictions, max_points=max_points,
                title=f"{what}force components")
    if learning_curve is not None:
        from ..history import read_history_csv
        from .plots import learning_curve_plot
        if histories is None or len(histories) != evaluation.committee:
            raise ValueError(f"the learning curve needs one history per model file "
                             f"({evaluation.committee}), got "
                             f"{0 if histories is None else len(histories)}")
        name = evaluation.metrics.get("model", {}).get("name")
        drawn["learning_curve"] = learning_curve_plot(
            learning_curve, [read_history_csv(h) for h in histories],
            title=f"{name}: learning curve" if name else "Learning curve")
    return drawn


def remove_stale_plots(folder: str | os.PathLike, written: Sequence[str | os.PathLike | None]
                       ) -> list[str]:
    """Remove the plots (:data:`PLOT_FILES`) in ``folder`` that this evaluation did not
    write (``written``: the paths it wrote, ``None`` for those it did not), so that no
    plot of an earlier model sits next to new metrics.  Returns the removed paths."""
    kept = {os.path.abspath(p) for p in written if p is not None}
    removed = []
    for name in PLOT_FILES.values():
        path = os.path.join(os.fspath(folder), name)
        if os.path.abspath(path) not in kept and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed
