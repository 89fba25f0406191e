"""Predictions of saved model files on the structures of a training database.

Any model file nnpflow writes is accepted: the family registry
(:mod:`nnpflow.models.registry`) loads it and predicts with the family's own
path (an ANN reuses the database's persisted features and force derivatives
when the database carries the model's descriptor, and featurises the
structures itself otherwise; a layer-stack model such as SchNet predicts
forces when it has a ``Force`` layer).

Every prediction is a :class:`~nnpflow.models.prediction_result.PredictionResult`
(energies eV, forces eV/Å, with the database's reference labels).  A committee's
prediction is the members' mean with their spread (:func:`committee_mean`).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..models.prediction_result import PredictionResult, committee_mean, empty_result
from ..models.registry import load_model, model_kind

__all__ = ["ANN", "LAYER_STACK", "model_kind", "predict_model", "committee_mean"]

#: model kinds by file schema
ANN = "ann"
LAYER_STACK = "layer_stack"


def predict_model(path: str | os.PathLike, database: str | os.PathLike,
                  indices: Sequence[int] | np.ndarray, *, batch_size: int = 64,
                  show_progress: bool = False) -> PredictionResult:
    """Predict the structures ``indices`` (positions in the database) with the
    model file ``path``.

    Returns a :class:`PredictionResult` in the order of ``indices``: ``energies``
    (S,) eV, ``forces`` one (N_s, 3) array per structure in eV/Å (``None`` for a
    layer-stack model without a ``Force`` layer), ``n_atoms``, ``names`` (source
    labels), ``species`` and the database's ``reference_energies`` (NaN where a
    structure has none) and ``reference_forces`` (``None`` entries where it has none).
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0:
        return empty_result()
    return load_model(path).predict_database(database, indices, batch_size=batch_size,
                                             show_progress=show_progress)
