"""Neighbour lists of one structure: the one entry point of the package.

:func:`neighbor_list` returns every directed pair ``(i, j, S)`` with
``|r_j - r_i + S @ cell| <= cutoff``, where ``S`` is an integer image offset along
the periodic lattice vectors; an atom and its own periodic image appear as
``i == j`` with ``S != 0``.  Cells of any shape and cells smaller than the cutoff
(many images of one atom) are handled; atoms outside the home cell give the pairs
(and, to rounding, the vectors) of the wrapped structure, with ``S`` referring to
the positions as given.  Isolated structures (no periodic direction) have no
images.  It is the search behind the overlap check (:mod:`nnpflow.structure_checks`)
and the pair lists of message-passing models (:mod:`nnpflow.models.pairs`); the
descriptor runs its torch backend batched over many structures
(:func:`nnpflow.descriptors.neighbors.pair_search`).

Backends (``backend=``), all giving the same pairs:

* ``"numpy"``: all pairs by broadcasting, over the image offsets that can reach the
  cutoff (one offset per pair when the cutoff is below half of every lattice-plane
  spacing: the minimum image); ASE's cell lists
  (:func:`ase.neighborlist.primitive_neighbor_list`) above ``DENSE_LIMIT`` atoms.
  Importing this module or running this backend on small structures loads neither
  torch nor scipy, so the data stages (ingest) stay light.
* ``"torch"``: the descriptor's vectorised search
  (:mod:`nnpflow.descriptors.neighbors`: padded all-pairs or cell lists, CPU or
  CUDA).
* ``"auto"`` (default): ``"torch"`` when torch is already imported, else ``"numpy"``.

Units: positions, cells, cutoffs, vectors and distances in Å.
"""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import dataclass

import numpy as np

__all__ = ["Pairs", "neighbor_list", "DENSE_LIMIT"]

#: Above this many atoms the numpy backend hands over to ASE's cell lists.
DENSE_LIMIT = 300


@dataclass
class Pairs:
    """Directed neighbour pairs of one structure, sorted by ``(i, j, shift)``.

    Attributes
    ----------
    i, j : ndarray (E,) int64
        Centre and neighbour atom (the neighbour's home-cell index).
    shift : ndarray (E, 3) int64
        Image offsets ``S`` along the lattice vectors (zero for isolated structures).
    vector : ndarray (E, 3) float64
        ``positions[j] - positions[i] + shift @ cell`` in Å.
    distance : ndarray (E,) float64
        ``|vector|`` in Å.
    """

    i: np.ndarray
    j: np.ndarray
    shift: np.ndarray
    vector: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return int(self.i.shape[0])

    def select(self, keep: np.ndarray) -> "Pairs":
        """The pairs ``keep`` (a boolean mask or integer indices), order kept."""
        return Pairs(self.i[keep], self.j[keep], self.shift[keep], self.vector[keep],
                     self.distance[keep])


def _geometry(positions, cell, pbc):
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if cell is None:
        return pos, np.zeros((3, 3)), np.zeros(3, dtype=bool)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if pbc is None:
        pbc = np.ones(3, dtype=bool)
    pbc = np.asarray(pbc, dtype=bool).reshape(-1)
    if pbc.shape != (3,):
        pbc = np.repeat(pbc, 3)[:3] if pbc.size == 1 else pbc
    return pos, cell, pbc


def neighbor_list(positions, cell, pbc, cutoff: float, *, backend: str = "auto") -> Pairs:
    """All directed pairs within ``cutoff`` (Å) of one structure.

    Parameters
    ----------
    positions : array (N, 3)
        Cartesian positions in Å.
    cell : array (3, 3) or None
        Lattice vectors as rows (Å); ``None`` for an isolated structure.
    pbc : array (3,) bool, bool, or None
        Periodicity per lattice vector; ``None``: periodic along all three when a
        cell is given.
    cutoff : float
        Cutoff radius in Å (finite, > 0); pairs with distance <= cutoff are kept.
    backend : {"auto", "numpy", "torch"}
        See the module docstring; all give the same pairs.

    Returns
    -------
    Pairs
        Sorted by ``(i, j, shift)``; ``i == j`` only with a non-zero shift.
    """
    cutoff = float(cutoff)
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"neighbour cutoff must be positive and finite, got {cutoff}")
    if backend == "auto":
        backend = "torch" if "torch" in sys.modules else "numpy"
    pos, cell_, pbc_ = _geometry(positions, cell, pbc)
    if backend == "numpy":
        if pos.shape[0] > DENSE_LIMIT:
            i, j, shift = _ase_pairs(pos, cell_, pbc_, cutoff)
        else:
            i, j, shift = _dense_pairs(pos, cell_, pbc_, cutoff)
    elif backend == "torch":
        i, j, shift = _torch_pairs(pos, cell_, pbc_, cutoff)
    else:
        raise ValueError(f"unknown neighbour-list backend {backend!r} "
                         f"(expected 'auto', 'numpy' or 'torch')")
    if i.size == 0:
        return Pairs(i, j, shift, np.zeros((0, 3)), np.zeros(0))
    vector = pos[j] - pos[i] + shift.astype(np.float64) @ cell_
    distance = np.sqrt(np.einsum("ij,ij->i", vector, vector))
    keep = distance <= cutoff            # candidates were taken with a little slack
    order = np.lexsort((shift[keep, 2], shift[keep, 1], shift[keep, 0], j[keep], i[keep]))
    idx = np.flatnonzero(keep)[order]
    return Pairs(i[idx], j[idx], shift[idx], vector[idx], distance[idx])


def _empty():
    e = np.zeros(0, dtype=np.int64)
    return e, e, np.zeros((0, 3), dtype=np.int64)


def _dense_pairs(pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """Candidate ``(i, j, shift)`` (a superset within rounding) by broadcasting."""
    n = pos.shape[0]
    if n == 0:
        return _empty()
    slack = 1e-9 * (1.0 + cutoff) ** 2
    limit = cutoff * cutoff + slack
    if not pbc.any():
        diff = pos[None, :, :] - pos[:, None, :]
        d2 = np.einsum("ijc,ijc->ij", diff, diff)
        d2[np.arange(n), np.arange(n)] = np.inf
        i, j = np.nonzero(d2 <= limit)
        return i.astype(np.int64), j.astype(np.int64), np.zeros((i.size, 3), dtype=np.int64)
    inverse = np.linalg.inv(cell)          # columns: reciprocal vectors b_k
    recip = np.sqrt((inverse * inverse).sum(0))    # 1 / lattice-plane spacing, 1/Å
    if cutoff * float(recip[pbc].max()) < 0.5 * (1.0 - 1e-9):
        return _minimum_image_pairs(pos, cell, inverse, pbc, limit)
    # wrap into the home cell (offsets w), then every image offset within reach
    frac = pos @ inverse
    w = np.where(pbc, np.floor(frac), 0.0)
    wrapped = (frac - w) @ cell
    reach = np.where(pbc, np.ceil(cutoff * recip * (1.0 + 1e-9)), 0).astype(int)
    # |q_j + s - q_i| = |q_i - s - q_j|: the zero offset and half of the others (first
    # non-zero component positive) find every pair once; the mirror gives the rest
    half = [t for t in itertools.product(*(range(-r, r + 1) for r in reach.tolist()))
            if next((c for c in t if c), 0) > 0]
    offsets = np.array([(0, 0, 0)] + half, dtype=np.float64)          # (K, 3)
    images = (wrapped[None, :, :] + (offsets @ cell)[:, None, :]).reshape(-1, 3)  # (K*N, 3)
    # squared distances by the expansion (one BLAS product); candidates get a
    # generous slack here and the exact test in the caller
    d2 = (np.einsum("ij,ij->i", wrapped, wrapped)[:, None]
          + np.einsum("ij,ij->i", images, images)[None, :] - 2.0 * wrapped @ images.T)
    d2[np.arange(n), np.arange(n)] = np.inf
    slack = 1e-9 * (1.0 + float(np.abs(images).max())) ** 2
    i, q = np.nonzero(d2 <= limit + slack)
    k, j = np.divmod(q, n)
    s_half = offsets[k]
    zero = k == 0
    # mirror the non-zero offsets: (i, j, s) -> (j, i, -s)
    i_all = np.concatenate([i, j[~zero]])
    j_all = np.concatenate([j, i[~zero]])
    s_all = np.concatenate([s_half, -s_half[~zero]])
    # wrapped_k = r_k - w_k @ cell, so the offset of the positions as given is
    # S = s - w_j + w_i
    shift = s_all - w[j_all] + w[i_all]
    return i_all.astype(np.int64), j_all.astype(np.int64), np.rint(shift).astype(np.int64)


def _minimum_image_pairs(pos, cell, inverse, pbc, limit):
    """Candidates when the cutoff is below half of every periodic lattice-plane
    spacing h_k: a separation ``v`` within it has ``|v . b_k| <= |v| / h_k < 1/2``,
    so the one offset that rounds the fractional separation into [-1/2, 1/2] is
    the only one within reach (and no atom is that close to its own image)."""
    n = pos.shape[0]
    frac = (pos @ inverse).T                 # (3, N)
    p = pos.T                                # (3, N) Å
    disp = [p[c][None, :] - p[c][:, None] for c in range(3)]     # r_j - r_i, (N, N) each
    shifts = {}
    for a in np.flatnonzero(pbc).tolist():
        shifts[a] = np.rint(frac[a][:, None] - frac[a][None, :])   # -round(f_j - f_i)
        for c in range(3):
            if cell[a, c] != 0.0:
                disp[c] += shifts[a] * cell[a, c]
    d2 = disp[0] * disp[0]
    d2 += disp[1] * disp[1]
    d2 += disp[2] * disp[2]
    d2.flat[:: n + 1] = np.inf
    i, j = np.nonzero(d2 <= limit)
    shift = np.zeros((i.size, 3), dtype=np.int64)
    for a, sa in shifts.items():
        shift[:, a] = sa[i, j]
    return i.astype(np.int64), j.astype(np.int64), shift


def _ase_pairs(pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    from ase.neighborlist import primitive_neighbor_list

    # a hair above the cutoff (ASE keeps d < cutoff); the caller keeps d <= cutoff
    i, j, shift = primitive_neighbor_list("ijS", pbc, cell, pos,
                                          cutoff * (1 + 1e-12) + 1e-12)
    return i.astype(np.int64), j.astype(np.int64), np.asarray(shift, dtype=np.int64)


def _torch_pairs(pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    import torch

    from .descriptors.neighbors import neighbor_list as torch_neighbor_list

    nl = torch_neighbor_list(torch.as_tensor(pos), torch.as_tensor(cell) if pbc.any() else None,
                             torch.as_tensor(pbc), cutoff * (1 + 1e-12))
    return (nl.center.cpu().numpy().astype(np.int64), nl.neighbor.cpu().numpy().astype(np.int64),
            nl.shift.cpu().numpy().astype(np.int64).reshape(-1, 3))
