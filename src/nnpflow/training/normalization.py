"""Normalisation of ANN inputs and targets, computed on the training split only.

* Features: per species, ``(G - mean_s) / std_s`` with the exact statistics of
  the training split (:func:`nnpflow.datasets.feature_statistics`; from the
  stored per-structure moments of a database with persisted features, so no
  feature is read).
* Energies: the referenced energy per atom ``e = (E - sum E_ref) / N`` (eV/atom)
  of the training structures gives ``shift = mean(e)`` and ``scale = std(e)``
  (population std; 1 eV/atom when fewer than two structures or no spread).
  The network's atomic output ``eps`` means ``scale * eps + shift`` eV per atom,
  so a structure's energy is ``E = scale * sum eps + N shift + sum E_ref`` and
  its forces are ``F = scale * F_eps`` with ``F_eps = -d(sum eps)/dR``.  The
  loss compares ``mean eps`` with ``(e - shift) / scale`` and ``F_eps`` with
  ``F / scale``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..datasets.split import subset_indices
from ..models.ann_model import EnergyNormalization

#: scales below this (eV/atom) count as "no spread"
MIN_ENERGY_SCALE = 1e-8


def referenced_energies_per_atom(dataset: Any) -> np.ndarray:
    """``(E - sum E_ref) / N`` (eV/atom) of a dataset or ``Subset``, NaN where a
    structure has no energy (no features are read)."""
    base, idx = subset_indices(dataset)
    return np.asarray(base.referenced_energies_per_atom(), dtype=np.float64)[idx]


def energy_normalization(dataset: Any) -> EnergyNormalization:
    """Shift and scale from the training split ``dataset`` (see the module doc)."""
    e = referenced_energies_per_atom(dataset)
    e = e[np.isfinite(e)]
    if e.size == 0:
        return EnergyNormalization(0.0, 1.0)
    shift = float(e.mean())
    scale = float(e.std()) if e.size >= 2 else 1.0
    if not math.isfinite(scale) or scale < MIN_ENERGY_SCALE:
        scale = 1.0
    return EnergyNormalization(shift, scale)
