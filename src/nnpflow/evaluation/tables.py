"""Error tables of predictions against reference labels.

Every function takes :class:`~nnpflow.models.prediction_result.PredictionResult`\\ s (or
plain dicts/rows derived from them) and returns JSON- or CSV-ready values:

* :func:`part_metrics` -- the metrics of one split part: those of
  :func:`nnpflow.evaluation.metrics.energy_force_metrics` (the one definition:
  ``energy_rmse_per_atom``, ``energy_mae_per_atom`` eV/atom, ``energy_rmse``,
  ``energy_mae`` eV, ``force_rmse``, ``force_mae`` eV/Å over all force
  components, ``n_structures``, ``per_species``), plus the committee spread;
* :func:`per_species_rows` -- force errors per element and part;
* :func:`structure_errors` and :func:`worst_structures` -- per-structure errors
  with source labels, and the structures with the largest ones;
* :func:`write_csv` -- one CSV file, written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..safe_write import write_text

__all__ = ["METRIC_KEYS", "PER_SPECIES_COLUMNS", "STRUCTURE_COLUMNS", "WORST_COLUMNS",
           "part_metrics", "per_species_rows", "structure_errors", "worst_structures",
           "write_csv"]

#: the metrics of a part, in the order metrics.json lists them
METRIC_KEYS = ("n_structures", "n_structures_with_energy", "n_structures_with_forces",
               "energy_rmse_per_atom", "energy_mae_per_atom", "energy_rmse", "energy_mae",
               "force_rmse", "force_mae", "n_force_components")

PER_SPECIES_COLUMNS = ("split", "species", "n_atoms", "force_rmse", "force_mae")

STRUCTURE_COLUMNS = ("split", "label", "n_atoms", "formula", "energy_ref", "energy_pred",
                     "energy_error", "energy_error_per_atom", "force_rmse", "force_mae",
                     "force_max_error", "energy_std", "force_std_mean")

WORST_COLUMNS = ("ranked_by", "rank") + STRUCTURE_COLUMNS


def _finite_or_none(value: Any) -> Any:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def part_metrics(result: Any) -> dict:
    """Metrics of one part's prediction (a ``PredictionResult`` with references).

    Keys :data:`METRIC_KEYS` and ``per_species`` (``{symbol: {n_atoms,
    force_rmse, force_mae}}``), from
    :func:`~nnpflow.evaluation.metrics.prediction_metrics` (which applies
    :func:`~nnpflow.evaluation.metrics.energy_force_metrics` to the structures
    with energy labels and to those with force labels).  Energy metrics are
    ``None`` without energy labels, force metrics ``None`` without force labels
    or predicted forces; an empty part has ``n_structures`` 0 and ``None``
    everywhere else.  A committee's prediction (with ``energy_std``) adds
    ``energy_std_mean`` (eV/atom: mean over structures of the spread of E/N) and
    ``force_std_mean`` (eV/Å: mean over all force components of their spread).
    """
    from .metrics import prediction_metrics
    if len(result) == 0:
        out: dict[str, Any] = {k: None for k in METRIC_KEYS}
        out.update(n_structures=0, n_structures_with_energy=0, n_structures_with_forces=0,
                   n_force_components=0, per_species={})
    else:
        metrics = prediction_metrics(result)
        out = {k: metrics[k] for k in METRIC_KEYS}
        out["per_species"] = metrics["per_species"]
    if getattr(result, "energy_std", None) is not None:
        n_atoms = np.asarray(result.n_atoms, dtype=np.float64)
        std = np.asarray(result.energy_std, dtype=np.float64)
        out["energy_std_mean"] = float(np.mean(std / n_atoms)) if len(std) else None
        stds = result.forces_std or []
        out["force_std_mean"] = (float(np.mean(np.concatenate([np.ravel(s) for s in stds])))
                                 if len(stds) else None)
    return out


def per_species_rows(metrics_by_part: Mapping[str, Mapping]) -> list[dict]:
    """Rows (:data:`PER_SPECIES_COLUMNS`) of the force errors per element (eV/Å,
    over the three components of every atom of that element), part by part, in
    the parts' order and alphabetically within a part."""
    rows = []
    for part, metrics in metrics_by_part.items():
        for symbol, m in sorted((metrics.get("per_species") or {}).items()):
            rows.append({"split": part, "species": symbol, "n_atoms": m["n_atoms"],
                         "force_rmse": m["force_rmse"], "force_mae": m["force_mae"]})
    return rows


def _formula(species: Sequence[str]) -> str:
    from ase.formula import Formula
    return Formula.from_list(list(species)).format("metal")


def structure_errors(result: Any, part: str) -> list[dict]:
    """One row (:data:`STRUCTURE_COLUMNS`) per structure of ``result``.

    ``energy_ref``/``energy_pred``/``energy_error`` (predicted − reference) in eV,
    ``energy_error_per_atom`` in eV/atom; ``force_rmse``/``force_mae`` over the
    structure's 3N components and ``force_max_error`` (the largest norm of an
    atom's force error vector) in eV/Å; ``energy_std`` (eV) and
    ``force_std_mean`` (eV/Å) are the committee spread.  Values a structure has
    no label for are ``None``.
    """
    rows = []
    ref_e = result.reference_energies
    for k in range(len(result)):
        n = int(result.n_atoms[k])
        e_pred = float(result.energies[k])
        e_ref = None if ref_e is None else _finite_or_none(ref_e[k])
        row: dict[str, Any] = {
            "split": part, "label": result.names[k], "n_atoms": n,
            "formula": _formula(result.species[k]), "energy_ref": e_ref,
            "energy_pred": e_pred,
            "energy_error": None if e_ref is None else e_pred - e_ref,
            "energy_error_per_atom": None if e_ref is None else (e_pred - e_ref) / n,
            "force_rmse": None, "force_mae": None, "force_max_error": None,
            "energy_std": None, "force_std_mean": None,
        }
        f_ref = result.reference_forces[k] if result.reference_forces is not None else None
        f_pred = result.forces[k] if result.forces is not None else None
        if f_ref is not None and f_pred is not None:
            diff = np.asarray(f_pred, dtype=np.float64) - np.asarray(f_ref, dtype=np.float64)
            row["force_rmse"] = float(math.sqrt(np.mean(diff ** 2)))
            row["force_mae"] = float(np.mean(np.abs(diff)))
            row["force_max_error"] = float(np.max(np.linalg.norm(diff, axis=1)))
        if result.energy_std is not None:
            row["energy_std"] = float(result.energy_std[k])
            if result.forces_std is not None:
                row["force_std_mean"] = float(np.mean(result.forces_std[k]))
        rows.append(row)
    return rows


def worst_structures(rows: Iterable[Mapping], n: int = 20) -> list[dict]:
    """The ``n`` structures with the largest absolute energy error per atom
    (``ranked_by`` = ``energy``), then the ``n`` with the largest force RMSE
    (``ranked_by`` = ``forces``), each ranked 1, 2, ... (ties keep the input
    order).  ``rows`` are :func:`structure_errors` rows; structures without the
    label a ranking needs are left out of it.  Columns :data:`WORST_COLUMNS`."""
    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rows = list(rows)
    out = []
    for criterion, key in (("energy", lambda r: abs(r["energy_error_per_atom"])),
                           ("forces", lambda r: r["force_rmse"])):
        column = "energy_error_per_atom" if criterion == "energy" else "force_rmse"
        usable = [r for r in rows if r.get(column) is not None]
        ranked = sorted(usable, key=key, reverse=True)[:int(n)]
        out += [{"ranked_by": criterion, "rank": i + 1, **r} for i, r in enumerate(ranked)]
    return out


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return value


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], columns: Sequence[str]
              ) -> None:
    """Write ``rows`` as CSV with the header ``columns`` (atomically); ``None``
    becomes an empty cell, floats keep full precision.  A row with a key outside
    ``columns`` raises ``ValueError``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        extra = sorted(set(row) - set(columns))
        if extra:
            raise ValueError(f"row has columns {extra} outside {list(columns)}")
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    write_text(path, buf.getvalue())
