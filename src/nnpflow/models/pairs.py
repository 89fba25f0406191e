"""Pair lists for layer-stack models: each unordered pair of atoms once.

Both come from the package's neighbour list (:func:`nnpflow.neighbors.neighbor_list`):
molecules (no periodic direction) keep the pairs ``i < j`` closer than the cutoff
(``math.inf``: every pair, no search needed); periodic cells keep every periodic
image within the cutoff, one of each pair of opposite entries ``(i, j, s)`` /
``(j, i, -s)``: the one with ``i < j``, or for an atom and its own image the one
whose image shift is lexicographically positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..neighbors import neighbor_list


@dataclass
class PairList:
    """Pairs of one structure: ``i``, ``j`` (P,) int64 atom indices and ``shift``
    (P, 3) int64 image offsets (lattice-vector multiples), or ``None`` for a
    molecule; the pair vector is ``R[j] - R[i] + shift @ cell`` (Å)."""

    i: np.ndarray
    j: np.ndarray
    shift: np.ndarray | None

    def __len__(self) -> int:
        return int(self.i.shape[0])


def molecule_pairs(positions: np.ndarray, cutoff: float) -> PairList:
    """Pairs ``i < j`` of an isolated structure with distance below ``cutoff`` (Å)."""
    if math.isinf(cutoff):
        i, j = np.triu_indices(positions.shape[0], 1)
        return PairList(i.astype(np.int64), j.astype(np.int64), None)
    pairs = neighbor_list(positions, None, False, cutoff)
    keep = (pairs.i < pairs.j) & (pairs.distance < cutoff)
    return PairList(pairs.i[keep], pairs.j[keep], None)


def periodic_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
                   cutoff: float) -> PairList:
    """Pairs of a periodic structure within ``cutoff`` (Å), each unordered pair once."""
    if math.isinf(cutoff):
        raise ConfigError("a periodic structure needs a finite pair cutoff; set cutoff_lr "
                          "for long-range layers such as ElectrostaticEnergy")
    pairs = neighbor_list(positions, cell, np.asarray(pbc, dtype=bool), float(cutoff),
                          backend="torch")
    i, j, s = pairs.i, pairs.j, pairs.shift
    # lexicographic sign of the shift: first non-zero component
    first = np.where(s[:, 0] != 0, s[:, 0], np.where(s[:, 1] != 0, s[:, 1], s[:, 2]))
    keep = (i < j) | ((i == j) & (first > 0))
    order = np.lexsort((s[keep, 2], s[keep, 1], s[keep, 0], j[keep], i[keep]))
    return PairList(i[keep][order], j[keep][order], s[keep][order])


def structure_pairs(positions: np.ndarray, cell: np.ndarray | None, pbc, cutoff: float) -> PairList:
    """Pair list of one structure (molecule or periodic cell) within ``cutoff`` Å."""
    if cell is not None and np.any(pbc):
        return periodic_pairs(positions, cell, np.asarray(pbc, dtype=bool), cutoff)
    return molecule_pairs(positions, cutoff)
