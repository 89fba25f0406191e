"""Checks that reject structures a potential cannot use.

* :func:`check_species`: every species must be in the model's species list.
* :func:`check_min_distance`: no two atoms (periodic images included, an atom
  and its own image too) may be at or closer than ``min_cutoff`` Å -- aenet's
  descriptor is undefined there and such structures are almost always broken
  input (duplicated atoms, wrong units).

Both raise :class:`~nnpflow.errors.InputError` naming the structure and what is
wrong.  :class:`StructureChecks` bundles them as one callable, the ``check``
argument of :meth:`nnpflow.sources.SourceCollection.iter_structures`.
"""

from __future__ import annotations

import itertools
import math
from typing import AbstractSet, Iterable, Sequence

import numpy as np

from .errors import ConfigError, InputError
from .structure import Structure

__all__ = ["check_species", "check_descriptor_species", "closest_pair", "check_min_distance", "overlap_error",
           "StructureChecks"]

#: Above this many atoms the all-pairs search gives way to ASE's binned neighbour list.
_DENSE_LIMIT = 300


def check_species(structure: Structure, species: Iterable[str]) -> None:
    """Raise ``InputError`` if ``structure`` has a species outside ``species``."""
    allowed = set(species)
    extra = sorted(set(structure.species) - allowed)
    if extra:
        raise InputError(f"species {', '.join(extra)} not in the species list "
                         f"[{', '.join(species if isinstance(species, list) else sorted(allowed))}]",
                         source=structure.name or None)


def check_descriptor_species(structure: Structure, species: Sequence[str],
                             allowed: AbstractSet[str] | None = None) -> None:
    """Raise ``InputError`` if ``structure`` has a species outside a descriptor's
    ``species`` list (``allowed``: the same as a set, when the caller keeps one)."""
    extra = set(structure.species) - (set(species) if allowed is None else allowed)
    if extra:
        raise InputError(f"species {', '.join(sorted(extra))} not in the descriptor's species "
                         f"{list(species)}", source=structure.name or None)


def closest_pair(structure: Structure, cutoff: float) -> tuple[float, int, int] | None:
    """The shortest interatomic distance at or below ``cutoff`` Å as ``(d, i, j)``
    (0-based atom indices; ``i == j`` for an atom and its own periodic image),
    or ``None`` when every distance is above ``cutoff``."""
    n = structure.n_atoms
    if n > _DENSE_LIMIT:
        return _closest_pair_binned(structure, cutoff)
    positions = structure.positions
    if structure.is_periodic:
        cell = structure.cell
        inverse = np.linalg.inv(cell)  # columns: reciprocal vectors b_k, a_i . b_k = delta_ik
        pbc = structure.pbc
        heights = 1.0 / np.sqrt((inverse * inverse).sum(0))  # lattice-plane spacings, Å
        if cutoff < 0.5 * (1.0 - 1e-9) * float(heights[pbc].min()):
            return _closest_pair_minimum_image(positions, cell, inverse, pbc, cutoff)
        frac = positions @ inverse
        frac[:, pbc] -= np.floor(frac[:, pbc])
        positions = frac @ cell
        # lattice planes k are 1/|b_k| apart; wrapped atoms need |shift_k| <= ceil(cutoff/spacing)
        reach = np.ceil(cutoff * np.sqrt((inverse * inverse).sum(0))).astype(int) * pbc
        # |p_j + S - p_i| = |p_i - S - p_j|: half of the shifts (first non-zero component
        # positive) plus the zero shift cover every pair; the zero shift comes first
        half = [t for t in itertools.product(*(range(-r, r + 1) for r in reach.tolist()))
                if next((c for c in t if c), 0) > 0]
        shifts = np.array([(0, 0, 0)] + half, dtype=np.float64) @ cell  # (K, 3) Å
    else:
        shifts = np.zeros((1, 3))
    zero = 0
    images = (positions[None, :, :] + shifts[:, None, :]).reshape(-1, 3)  # (K*N, 3)
    # squared distances |p_i - q|^2 by the expansion (BLAS); candidates re-checked exactly
    d2 = (np.einsum("ij,ij->i", positions, positions)[:, None]
          + np.einsum("ij,ij->i", images, images)[None, :] - 2.0 * positions @ images.T)
    d2[np.arange(n), zero * n + np.arange(n)] = np.inf
    slack = 1e-9 * (1.0 + float(np.abs(images).max())) ** 2
    limit = cutoff * cutoff + slack
    if d2.min() > limit:
        return None
    cand = np.nonzero(d2 <= limit)
    i, q = cand
    d = np.linalg.norm(images[q] - positions[i], axis=1)
    keep = d <= cutoff
    if not keep.any():
        return None
    k = int(np.argmin(np.where(keep, d, np.inf)))
    return float(d[k]), int(i[k]), int(q[k] % n)


def _closest_pair_minimum_image(positions: np.ndarray, cell: np.ndarray, inverse: np.ndarray,
                                pbc: np.ndarray, cutoff: float
                                ) -> tuple[float, int, int] | None:
    """:func:`closest_pair` for a cutoff below half of every periodic lattice-plane
    spacing h_k.  A separation ``v`` with ``|v| <= cutoff`` has fractional
    components ``|v . b_k| <= |v| / h_k < 1/2``, so it is the one image that
    rounding the fractional separation to [-1/2, 1/2] picks: one (N, N) distance
    matrix instead of one per image shift, and no atom is that close to its own
    image (those are at least min h_k away)."""
    n = len(positions)
    frac = (positions @ inverse).T                  # (3, N) fractional coordinates
    pos = positions.T                               # (3, N) Å
    # separations r_j - r_i per Cartesian component, (N, N) each; then the image shift
    disp = [pos[c][None, :] - pos[c][:, None] for c in range(3)]
    for a in np.flatnonzero(pbc):
        shift = np.rint(frac[a][None, :] - frac[a][:, None])  # integer offsets along a
        for c in range(3):
            if cell[a, c] != 0.0:
                disp[c] -= shift * cell[a, c]
    d2 = disp[0] * disp[0] + disp[1] * disp[1] + disp[2] * disp[2]
    d2[np.arange(n), np.arange(n)] = np.inf
    k = int(np.argmin(d2))
    i, j = divmod(k, n)
    d = float(np.sqrt(d2[i, j]))
    if not d <= cutoff:
        return None
    return d, int(i), int(j)


def _closest_pair_binned(structure: Structure, cutoff: float) -> tuple[float, int, int] | None:
    from ase.neighborlist import primitive_neighbor_list

    cell = structure.cell if structure.cell is not None else np.zeros((3, 3))
    # a hair above the cutoff: ASE keeps d < cutoff, we reject d <= cutoff
    i, j, d = primitive_neighbor_list("ijd", structure.pbc, cell, structure.positions,
                                      cutoff * (1 + 1e-12) + 1e-12)
    keep = d <= cutoff
    if not keep.any():
        return None
    k = int(np.argmin(np.where(keep, d, np.inf)))
    return float(d[k]), int(i[k]), int(j[k])


def check_min_distance(structure: Structure, min_cutoff: float) -> None:
    """Raise ``InputError`` if two atoms are ``min_cutoff`` Å apart or closer."""
    hit = closest_pair(structure, float(min_cutoff))
    if hit is None:
        return
    raise overlap_error(structure, *hit, min_cutoff)


def overlap_error(structure: Structure, distance: float, i: int, j: int,
                  min_cutoff: float) -> InputError:
    """The error for atoms ``i`` and ``j`` (0-based; ``i == j``: an atom and its
    own periodic image) of ``structure`` found ``distance`` Å apart, at or below
    ``min_cutoff`` Å."""
    species = structure.species
    if i == j:
        what = f"atom {i + 1} ({species[i]}) and its own periodic image"
    else:
        a, b = sorted((i, j))
        what = f"atoms {a + 1} ({species[a]}) and {b + 1} ({species[b]})"
    return InputError(f"overlapping atoms: {what} are {distance:.4g} Å apart, at or below "
                      f"min_cutoff {min_cutoff:g} Å", source=structure.name or None)


class StructureChecks:
    """Callable running :func:`check_species` and :func:`check_min_distance`.

    ``species=None`` and ``min_cutoff=None`` switch the respective check off.
    """

    def __init__(self, species: Iterable[str] | None = None, min_cutoff: float | None = None):
        self.species = list(species) if species is not None else None
        if min_cutoff is not None and not (math.isfinite(min_cutoff) and min_cutoff >= 0):
            raise ConfigError(f"min_cutoff must be a finite number >= 0, got {min_cutoff!r}")
        self.min_cutoff = None if min_cutoff is None else float(min_cutoff)

    def __call__(self, structure: Structure) -> None:
        if self.species is not None:
            check_species(structure, self.species)
        if self.min_cutoff is not None:
            check_min_distance(structure, self.min_cutoff)

    def __bool__(self) -> bool:
        return self.species is not None or self.min_cutoff is not None
