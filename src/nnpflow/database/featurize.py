"""Batched featurisation of blocks of structures for the database writer.

Features are computed for every structure; descriptor derivatives only for
structures with forces (those are the ones force training contracts).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..structure import Structure


def _numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def split_with_derivatives(result: Any, n: int) -> tuple[list, list]:
    """Normalise ``featurize_batch_with_derivatives`` output to two lists.

    Accepts a list of ``(features, derivatives)`` pairs or a pair of lists.
    """
    if (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], list)
            and isinstance(result[1], list)):
        return list(result[0]), list(result[1])
    pairs = list(result)
    return [p[0] for p in pairs], [p[1] for p in pairs]


class BlockFeaturizer:
    """Callable: ``featurizer(structures) -> iterator of (structure, features
    (N, F) ndarray or None, derivative arrays dict or None)``.

    Parameters
    ----------
    descriptor:
        A ``ChebyshevDescriptor`` (``featurize_batch``,
        ``featurize_batch_with_derivatives``, ``species``).
    features, derivatives:
        What to compute.  Derivatives are computed for structures with forces.
    dtype:
        ``"float32"`` or ``"float64"``: storage dtype of features and of the
        float derivative arrays (``to_arrays(dtype)``).
    """

    def __init__(self, descriptor: Any, *, features: bool, derivatives: bool,
                 dtype: str = "float32"):
        self.descriptor = descriptor
        self.features = bool(features)
        self.derivatives = bool(derivatives)
        self.dtype = dtype
        self._species = set(descriptor.species)

    def check_species(self, s: Structure) -> None:
        missing = sorted({x for x in s.species if x not in self._species})
        if missing:
            raise InputError(f"species {', '.join(missing)} not in the descriptor's species "
                             f"{list(self.descriptor.species)}", source=s.name or None)

    def __call__(self, structures: Sequence[Structure]
                 ) -> Iterator[tuple[Structure, np.ndarray | None, dict | None]]:
        structures = list(structures)
        for s in structures:
            s.validate()
            self.check_species(s)
        n = len(structures)
        feats: list[np.ndarray | None] = [None] * n
        ders: list[dict | None] = [None] * n
        with_d = [i for i, s in enumerate(structures) if self.derivatives and s.forces is not None]
        without_d = [i for i in range(n) if i not in set(with_d)]
        if with_d:
            batch = [structures[i] for i in with_d]
            f_list, d_list = split_with_derivatives(
                self.descriptor.featurize_batch_with_derivatives(batch), len(batch))
            for i, f, d in zip(with_d, f_list, d_list):
                feats[i] = _numpy(f)
                ders[i] = {k: np.asarray(v) for k, v in d.to_arrays(self.dtype).items()}
        if self.features and without_d:
            batch = [structures[i] for i in without_d]
            for i, f in zip(without_d, self.descriptor.featurize_batch(batch)):
                feats[i] = _numpy(f)
        for i, s in enumerate(structures):
            f = feats[i].astype(self.dtype, copy=False) if (self.features and feats[i] is not None) \
                else None
            yield s, f, ders[i]
