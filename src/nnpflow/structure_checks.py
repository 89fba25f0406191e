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

import math
from typing import AbstractSet, Iterable, Sequence

import numpy as np

from .errors import ConfigError, InputError
from .neighbors import neighbor_list
from .structure import Structure

__all__ = ["check_species", "check_descriptor_species", "closest_pair", "check_min_distance", "overlap_error",
           "StructureChecks"]

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
    or ``None`` when every distance is above ``cutoff``.

    Uses the package's neighbour list (:func:`nnpflow.neighbors.neighbor_list`) with
    its numpy backend, so that the data stages do not load torch."""
    search = cutoff if cutoff > 0 else 1e-9     # cutoff 0 still finds coincident atoms
    pairs = neighbor_list(structure.positions, structure.cell if structure.is_periodic else None,
                          structure.pbc, search, backend="numpy")
    if len(pairs) and cutoff < search:
        pairs = pairs.select(pairs.distance <= cutoff)
    if not len(pairs):
        return None
    k = int(np.argmin(pairs.distance))
    return float(pairs.distance[k]), int(pairs.i[k]), int(pairs.j[k])


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
