"""Seeded train/test splits returning ``torch.utils.data.Subset``s.

Subsets index the dataset they wrap, so a ``CachedStructureDataset``'s subsets
reuse its feature cache, and an ``HDF5StructureDataset``'s subsets share its
reader and block cache.  Indices in each subset are sorted (neighbouring
structures share database blocks).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch.utils.data import Subset

from ..splitting import fraction_count


def split_indices(n: int, test_fraction: float, seed: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` sorted index arrays of a random split of ``range(n)``.

    ``n_test = round(test_fraction * n)``, the nearest count with an exact half to
    the even neighbour (:func:`nnpflow.splitting.fraction_count`, the one
    rounding rule of every split), at least 1 when
    ``0 < test_fraction`` and ``n >= 2``, and at most ``n - 1`` when
    ``test_fraction < 1``.  The permutation is ``numpy.random.default_rng(seed)``'s.
    """
    f = float(test_fraction)
    if not (0.0 <= f <= 1.0) or math.isnan(f):
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction!r}")
    n = int(n)
    n_test = fraction_count(f, n)
    if f > 0 and n >= 2:
        n_test = max(1, n_test)
    if f < 1 and n >= 1:
        n_test = min(n_test, n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def train_test_split(dataset: Any, test_fraction: float = 0.1, seed: int | None = None
                     ) -> tuple[Subset, Subset]:
    """Split ``dataset`` into ``(train, test)`` ``Subset``s (see :func:`split_indices`)."""
    train, test = split_indices(len(dataset), test_fraction, seed)
    return Subset(dataset, train.tolist()), Subset(dataset, test.tolist())


def train_test_split_dataset(dataset: Any, test_fraction: float = 0.1,
                             seed: int | None = None) -> tuple[Subset, Subset]:
    """Generic splitter for any map-style dataset; same result as
    :func:`train_test_split`."""
    return train_test_split(dataset, test_fraction, seed)


def subset_indices(dataset: Any) -> tuple[Any, np.ndarray]:
    """``(base dataset, indices into it)`` for a dataset or nested ``Subset``s."""
    idx = None
    while isinstance(dataset, Subset):
        inner = np.asarray(dataset.indices, dtype=np.int64)
        idx = inner if idx is None else inner[idx]
        dataset = dataset.dataset
    if idx is None:
        idx = np.arange(len(dataset), dtype=np.int64)
    return dataset, idx


def fit_reference_energies(train: Any, *others: Any) -> dict:
    """Fit per-species reference energies on ``train`` (a dataset or ``Subset``)
    by least squares (:func:`nnpflow.energy_reference.fit_atomic_energies`) and
    apply them to the base datasets of ``train`` and ``others`` (``None``
    entries skipped).  Returns the fit (``atomic_energies``, ``n_structures``,
    ``rank``, ``rmse_per_atom``).  Species of the descriptor that no training
    structure contains get no reference; data holding them raise ``ConfigError``.
    """
    from ..energy_reference import fit_atomic_energies
    base, idx = subset_indices(train)
    species = list(base.descriptor.species)
    comp = base.compositions(species)[idx]
    present = comp.sum(axis=0) > 0
    fit = fit_atomic_energies(comp[:, present], base.energies()[idx],
                              [s for s, p in zip(species, present) if p])
    done = set()
    for ds in (train, *others):
        if ds is None:
            continue
        b, _ = subset_indices(ds)
        if id(b) not in done:
            b.set_atomic_energies(fit["atomic_energies"])
            done.add(id(b))
    return fit


def feature_statistics(dataset: Any) -> dict[str, dict[str, Any]]:
    """Exact per-species raw-feature statistics of ``dataset`` (a dataset or a
    ``Subset``, e.g. the training split): ``{species: {"count", "mean", "std"}}``."""
    base, idx = subset_indices(dataset)
    return base.feature_statistics(idx)
