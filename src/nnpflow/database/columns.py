"""Columnar blocks: a run of structures as concatenated numpy arrays.

A :class:`ColumnBlock` is the unit the writer appends, the merge copies and the
reader decodes.  Per-structure arrays have ``k`` rows, per-atom arrays ``a =
sum(n_atoms)`` rows, and each derivative array its own row count with a
per-structure row count in ``derivative_counts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..structure import Structure, atomic_number
from .schema import STRUCTURE_FIELDS
from .statistics import group_moments


@dataclass
class ColumnBlock:
    """``k`` structures as columns (units: Å, eV, eV/Å, e, e·Å).

    Attributes
    ----------
    names : list[str], length k
        Source labels.
    n_atoms : ndarray (k,), int64
    structure : dict[str, ndarray]
        Per-structure fields of :data:`~nnpflow.database.schema.STRUCTURE_FIELDS`,
        each (k, ...).
    positions : ndarray (a, 3), float64
    numbers : ndarray (a,), uint8
    forces, charges : ndarray (a, 3) / (a,), float64, or None
        ``None`` when no structure of the block has them; otherwise NaN rows for
        structures without.
    features : ndarray (a, F) or None
        Raw descriptor features in the storage dtype.
    feature_count, feature_mean, feature_m2 : ndarray (k, T), (k, T, F), (k, T, F)
        Per-structure, per-descriptor-species moments of the features.
    derivatives : dict[str, ndarray]
        Concatenated derivative arrays (rows of all structures of the block).
    derivative_counts : dict[str, ndarray (k,), int64]
        Rows per structure of each derivative array.
    has_derivatives : ndarray (k,), uint8
    """

    names: list[str]
    n_atoms: np.ndarray
    structure: dict[str, np.ndarray]
    positions: np.ndarray
    numbers: np.ndarray
    forces: np.ndarray | None = None
    charges: np.ndarray | None = None
    features: np.ndarray | None = None
    feature_count: np.ndarray | None = None
    feature_mean: np.ndarray | None = None
    feature_m2: np.ndarray | None = None
    derivatives: dict[str, np.ndarray] = field(default_factory=dict)
    derivative_counts: dict[str, np.ndarray] = field(default_factory=dict)
    has_derivatives: np.ndarray | None = None

    @property
    def n_structures(self) -> int:
        return len(self.names)

    @property
    def atom_offset(self) -> np.ndarray:
        """Local offsets (k+1,) into the per-atom arrays."""
        return np.concatenate(([0], np.cumsum(self.n_atoms))).astype(np.int64)

    def content_hashes(self) -> list[str]:
        return [bytes(row).hex() for row in self.structure["content_hash"]]


def structures_to_columns(structures: Sequence[Structure],
                          features: Sequence[np.ndarray] | None = None,
                          derivatives: Sequence[Mapping[str, np.ndarray] | None] | None = None,
                          *, feature_dtype: str = "float32",
                          species_to_idx: Mapping[str, int] | None = None,
                          content_hashes: Sequence[str] | None = None) -> ColumnBlock:
    """Columns of ``structures`` with optional per-structure features (N, F) and
    derivative array dicts (``None`` for structures without derivatives)."""
    k = len(structures)
    n_atoms = np.array([s.n_atoms for s in structures], dtype=np.int64)
    cols: dict[str, np.ndarray] = {}
    for name, (dtype, shape, fill) in STRUCTURE_FIELDS.items():
        cols[name] = np.full((k,) + shape, fill, dtype=dtype)
    for i, s in enumerate(structures):
        if s.energy is not None:
            cols["energy"][i] = s.energy
        if s.cell is not None:
            cols["cell"][i] = s.cell
            cols["has_cell"][i] = 1
        cols["pbc"][i] = np.asarray(s.pbc, dtype=bool)
        if s.total_charge is not None:
            cols["total_charge"][i] = s.total_charge
        if s.dipole is not None:
            cols["dipole"][i] = s.dipole
        if s.frame is not None:
            cols["frame"][i] = s.frame
        cols["has_forces"][i] = s.forces is not None
        cols["has_charges"][i] = s.charges is not None
        digest = content_hashes[i] if content_hashes is not None else s.content_hash()
        cols["content_hash"][i] = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)
    if k:
        positions = np.concatenate([s.positions for s in structures])
        numbers = np.concatenate([np.array([atomic_number(x) for x in s.species], dtype=np.uint8)
                                  for s in structures])
    else:
        positions = np.zeros((0, 3))
        numbers = np.zeros(0, dtype=np.uint8)
    forces = None
    if cols["has_forces"].any():
        forces = np.concatenate([s.forces if s.forces is not None
                                 else np.full((s.n_atoms, 3), np.nan) for s in structures])
    charges = None
    if cols["has_charges"].any():
        charges = np.concatenate([s.charges if s.charges is not None
                                  else np.full(s.n_atoms, np.nan) for s in structures])
    block = ColumnBlock(names=[s.name for s in structures], n_atoms=n_atoms, structure=cols,
                        positions=positions, numbers=numbers, forces=forces, charges=charges)
    if features is not None:
        if species_to_idx is None:
            raise ValueError("species_to_idx is needed to store features")
        n_types = len(species_to_idx)
        n_feat = int(features[0].shape[1]) if k else 0
        feats = (np.concatenate([np.asarray(f) for f in features]).astype(feature_dtype, copy=False)
                 if k else np.zeros((0, n_feat), dtype=feature_dtype))
        block.features = feats
        lookup = species_lookup(species_to_idx)
        sidx = lookup[numbers]
        group = np.repeat(np.arange(k), n_atoms) * n_types + sidx
        count, mean, m2 = group_moments(feats, group, k * n_types)
        block.feature_count = count.reshape(k, n_types).astype(np.int32)
        block.feature_mean = mean.reshape(k, n_types, -1)
        block.feature_m2 = m2.reshape(k, n_types, -1)
    if derivatives is not None:
        present = np.array([d is not None for d in derivatives], dtype=np.uint8)
        block.has_derivatives = present
        keys = None
        for d in derivatives:
            if d is not None:
                keys = sorted(d)
                break
        if keys is not None:
            for key in keys:
                parts = [np.asarray(d[key]) for d in derivatives if d is not None]
                block.derivatives[key] = np.concatenate(parts)
                block.derivative_counts[key] = np.array(
                    [0 if d is None else np.asarray(d[key]).shape[0] for d in derivatives],
                    dtype=np.int64)
    return block


def species_lookup(species_to_idx: Mapping[str, int]) -> np.ndarray:
    """Array ``lookup[Z] -> species index`` (-1 for species not in the mapping)."""
    lookup = np.full(256, -1, dtype=np.int64)
    for symbol, idx in species_to_idx.items():
        lookup[atomic_number(symbol)] = idx
    return lookup

