"""Batched featurisation of blocks of structures for the database writer.

Features are computed for every structure; descriptor derivatives only for
structures with forces (those are the ones force training contracts).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

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
        ``featurize_batch_with_derivatives``, ``species``, ``min_cutoff``).
    features, derivatives:
        What to compute.  Derivatives are computed for structures with forces.
    dtype:
        ``"float32"`` or ``"float64"``: storage dtype of features and of the
        float derivative arrays (``to_arrays(dtype)``).
    check_overlaps:
        Reject structures with two atoms (periodic images included) at or below
        the descriptor's ``min_cutoff`` Å, whose features would leave that pair
        out.  The descriptor's neighbour search reports such pairs as it
        featurises (no second search); structures it does not featurise are
        checked with :func:`nnpflow.structure_checks.check_min_distance`.
    on_reject:
        ``on_reject(structure, error)`` for each rejected structure, which is
        then left out of the output; ``None`` raises the first rejection (in
        input order) instead.
    validated:
        The structures were already ``validate()``-d and their species checked
        against the descriptor (e.g. by ``SourceCollection.iter_structures``):
        do not repeat it.
    """

    def __init__(self, descriptor: Any, *, features: bool, derivatives: bool,
                 dtype: str = "float32", check_overlaps: bool = False,
                 on_reject: Callable[[Structure, InputError], None] | None = None,
                 validated: bool = False):
        self.descriptor = descriptor
        self.features = bool(features)
        self.derivatives = bool(derivatives)
        self.dtype = dtype
        self.check_overlaps = bool(check_overlaps)
        self.on_reject = on_reject
        self.validated = bool(validated)
        self._species = set(descriptor.species)

    def check_species(self, s: Structure) -> None:
        from ..structure_checks import check_descriptor_species

        check_descriptor_species(s, self.descriptor.species, self._species)

    def __call__(self, structures: Sequence[Structure]
                 ) -> Iterator[tuple[Structure, np.ndarray | None, dict | None]]:
        structures = list(structures)
        if not self.validated:
            for s in structures:
                s.validate()
                self.check_species(s)
        n = len(structures)
        feats: list[np.ndarray | None] = [None] * n
        ders: list[dict | None] = [None] * n
        with_d = [i for i, s in enumerate(structures) if self.derivatives and s.forces is not None]
        with_d_set = set(with_d)
        without_d = [i for i in range(n) if i not in with_d_set]
        close: dict[int, Any] = {}
        extra = {"close_pairs": []} if self.check_overlaps else {}
        if with_d:
            batch = [structures[i] for i in with_d]
            f_list, d_list = split_with_derivatives(
                self.descriptor.featurize_batch_with_derivatives(batch, **extra), len(batch))
            for i, f, d in zip(with_d, f_list, d_list):
                feats[i] = _numpy(f)
                ders[i] = {k: np.asarray(v) for k, v in d.to_arrays(self.dtype).items()}
            close.update((with_d[c.index], c) for c in extra.get("close_pairs", ()))
        if self.features and without_d:
            extra = {"close_pairs": []} if self.check_overlaps else {}
            batch = [structures[i] for i in without_d]
            for i, f in zip(without_d, self.descriptor.featurize_batch(batch, **extra)):
                feats[i] = _numpy(f)
            close.update((without_d[c.index], c) for c in extra.get("close_pairs", ()))
        rejected = self._overlaps(structures, close,
                                  [] if self.features else without_d)
        for i, s in enumerate(structures):
            if i in rejected:
                continue
            f = feats[i].astype(self.dtype, copy=False) if (self.features and feats[i] is not None) \
                else None
            yield s, f, ders[i]

    def raise_first_overlap(self, structures: Sequence[Structure]) -> None:
        """With ``check_overlaps``, raise the error of the first of
        ``structures`` with atoms at or below ``min_cutoff`` (without
        featurising them); else return."""
        if self.check_overlaps:
            from ..structure_checks import check_min_distance

            for s in structures:
                check_min_distance(s, float(self.descriptor.min_cutoff))

    def _overlaps(self, structures: Sequence[Structure], close: dict[int, Any],
                  unfeaturized: Sequence[int]) -> set[int]:
        """Indices of the structures rejected for overlapping atoms (after
        ``on_reject``), or raise the first one's error when there is no
        ``on_reject``.  ``close`` maps indices to the descriptor's ``ClosePair``;
        ``unfeaturized`` structures are checked here."""
        if not self.check_overlaps:
            return set()
        from ..structure_checks import check_min_distance, overlap_error

        min_cutoff = float(self.descriptor.min_cutoff)
        errors = {i: overlap_error(structures[i], c.distance, c.i, c.j, min_cutoff)
                  for i, c in close.items()}
        for i in unfeaturized:
            try:
                check_min_distance(structures[i], min_cutoff)
            except InputError as exc:
                errors[i] = exc
        if errors and self.on_reject is None:
            raise errors[min(errors)]
        for i in sorted(errors):
            self.on_reject(structures[i], errors[i])
        return set(errors)
