"""Collating structures (``nnpflow.Structure`` or ``ase.Atoms``) into flat tensors.

One batch is the concatenation of its structures' atoms; per-structure data
(cell, periodicity, atom count) are stacked.  The descriptor splits a request
into batches ("chunks") sized for the device and regroups the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..structure import Structure

__all__ = ["AtomsBatch", "structure_arrays", "collate", "plan_chunks"]


def structure_arrays(s) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[str], str]:
    """``(positions (N, 3), cell (3, 3) or None, pbc (3,), species, name)`` of a
    ``Structure`` or ``ase.Atoms``; a cell without any periodic direction counts
    as isolated (as in :meth:`Structure.from_ase`)."""
    if isinstance(s, Structure):
        cell = s.cell if s.is_periodic else None
        return s.positions, cell, np.asarray(s.pbc, dtype=bool), s.species, s.name
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover
        Atoms = ()
    if isinstance(s, Atoms):
        pbc = np.asarray(s.pbc, dtype=bool)
        cell = np.asarray(s.cell.array, dtype=np.float64) if pbc.any() else None
        return (np.asarray(s.positions, dtype=np.float64), cell, pbc,
                s.get_chemical_symbols(), str(s.info.get("name", "")))
    raise TypeError(f"expected nnpflow.Structure or ase.Atoms, got {type(s).__name__}")


@dataclass
class AtomsBatch:
    """Flat tensors of several structures.

    positions (N, 3) Å; cells (B, 3, 3) Å (identity for isolated structures);
    pbcs (B, 3) bool; counts (B,) int64 on the device and ``counts_list`` on the
    host; species (N,) int64 indices into the descriptor's species list.
    """

    positions: torch.Tensor
    cells: torch.Tensor
    pbcs: torch.Tensor
    counts: torch.Tensor
    counts_list: list[int]
    species: torch.Tensor


def collate(items: Sequence[tuple], species_to_idx: dict[str, int], device, dtype) -> AtomsBatch:
    """Stack ``structure_arrays`` tuples into an :class:`AtomsBatch`.

    Raises :class:`InputError` naming the structure when one has no atoms, a
    singular periodic cell or a species the descriptor does not know.
    """
    pos, cells, pbcs, counts, spec = [], [], [], [], []
    eye = np.eye(3)
    for index, (p, cell, pbc, species, name) in enumerate(items):
        label = name or f"structure #{index}"
        n = p.shape[0]
        if n == 0:
            raise InputError("structure has no atoms", source=label)
        try:
            spec.append(np.fromiter((species_to_idx[x] for x in species), dtype=np.int64,
                                    count=n))
        except KeyError:
            unknown = sorted(set(species) - set(species_to_idx))
            raise InputError(
                f"species {', '.join(unknown)} not in the descriptor's species "
                f"{list(species_to_idx)}", source=label) from None
        if not np.all(np.isfinite(p)):
            raise InputError("non-finite atomic positions", source=label)
        if cell is None:
            cells.append(eye)
            pbcs.append(np.zeros(3, dtype=bool))
        else:
            if not np.all(np.isfinite(cell)) or abs(np.linalg.det(cell)) < 1e-8:
                raise InputError("singular or non-finite periodic cell", source=label)
            cells.append(cell)
            pbcs.append(pbc)
        pos.append(p)
        counts.append(n)
    positions = torch.from_numpy(np.concatenate(pos)).to(device=device, dtype=dtype)
    return AtomsBatch(
        positions=positions,
        cells=torch.from_numpy(np.stack(cells)).to(device=device, dtype=dtype),
        pbcs=torch.from_numpy(np.stack(pbcs)).to(device=device),
        counts=torch.tensor(counts, dtype=torch.long, device=device),
        counts_list=counts,
        species=torch.from_numpy(np.concatenate(spec)).to(device=device),
    )


def plan_chunks(sizes: Sequence[int], keys: Sequence[tuple[int, int, int]], max_pairs: int,
                dense_max_atoms: int) -> list[list[int]]:
    """Group structure indices into chunks for one vectorised pass each.

    ``keys`` are the per-direction image reaches of the dense neighbour search
    (:func:`nnpflow.descriptors.neighbors.image_reach`); a chunk examines
    ``len * max_size**2 * prod(1 + max reach)`` candidate images, kept below
    ``8 * max_pairs``, and ``len * max_size**2 <= 2 * max_pairs`` padded pairs
    (structures are taken in order of image count, then size, so similar ones
    share chunks).  Structures larger than ``dense_max_atoms``
    (cell lists) form chunks with ``sum(size) * 64 <= max_pairs``.  Every chunk
    holds at least one structure.
    """
    def images(k):
        return (1 + k[0]) * (1 + k[1]) * (1 + k[2])

    small = sorted((i for i in range(len(sizes)) if sizes[i] <= dense_max_atoms),
                   key=lambda i: (images(keys[i]), sizes[i]))
    large = sorted((i for i in range(len(sizes)) if sizes[i] > dense_max_atoms),
                   key=lambda i: sizes[i])
    chunks: list[list[int]] = []
    current: list[int] = []
    reach = (0, 0, 0)
    n_max = 0
    for i in small:
        new_reach = tuple(max(a, b) for a, b in zip(reach, keys[i]))
        new_n = max(n_max, sizes[i])
        pairs = (len(current) + 1) * new_n * new_n
        if current and (pairs * images(new_reach) > 8 * max_pairs or pairs > 2 * max_pairs):
            chunks.append(current)
            current, new_reach, new_n = [], tuple(keys[i]), sizes[i]
        current.append(i)
        reach, n_max = new_reach, new_n
    if current:
        chunks.append(current)
    current, total = [], 0
    for i in large:
        if current and (total + sizes[i]) * 64 > max_pairs:
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += sizes[i]
    if current:
        chunks.append(current)
    return chunks
