"""Batches for layer-stack models read lazily from an nnpflow database.

:class:`LazyGraphs` has the interface of :class:`~nnpflow.models.batch.PackedGraphs`
(``batch(indices)``, ``targets``, ``len()``) but keeps no structure in memory
beyond two bounded caches: the database reader's block cache and a cache of
per-structure records (positions, labels and pair lists for the model's
cutoffs), both counted in structures.  A structure missing from the cache is
read from the database and its pair lists are built when a batch needs it, so
the memory of a training does not grow with the size of the database.

Batches are value for value those of :class:`PackedGraphs` over the same
structures (the same float64 arrays, converted to the batch dtype the same
way); the only difference is that a batch made only of molecules carries no
``offsets`` where a packed set with a periodic structure elsewhere would carry
zeros (``Ra[j] - Ra[i] + 0`` is the same vector).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..database.block_cache import LRUCache
from ..database.reader import DatabaseReader
from ..errors import ConfigError, InputError
from .batch import _ATOM_LABELS, _STRUCTURE_LABELS
from .pairs import structure_pairs

#: structures whose records (pair lists included) stay in memory by default
DEFAULT_CACHE_STRUCTURES = 2048


@dataclass
class _Record:
    """One structure, ready to batch: positions (N, 3) Å float64, atomic numbers
    (N,), labels (float64), total charge (e) and per-cutoff pairs ``(i, j,
    offsets (P, 3) Å or None for a molecule)``."""

    positions: np.ndarray
    numbers: np.ndarray
    labels: dict
    total_charge: float
    pairs: dict


class LazyGraphs:
    """Structures of a database read per batch, with pair lists for given cutoffs.

    Parameters
    ----------
    database : the nnpflow database (HDF5).
    cutoff_sr, cutoff_lr, targets, total_charge, max_Za : as for
        :class:`~nnpflow.models.batch.PackedGraphs`; a missing label or an atomic
        number above ``max_Za`` is reported when a batch first reads the structure.
    cache_structures : structures whose records (with pair lists) stay in this
        process's LRU cache; ``0`` rebuilds every structure for every batch.
    """

    def __init__(self, database: str | os.PathLike, cutoff_sr: float | None = None,
                 cutoff_lr: float | None = None, targets: Iterable[str] = (),
                 total_charge: bool = False, max_Za: int | None = None,
                 cache_structures: int = DEFAULT_CACHE_STRUCTURES):
        self.database = Path(database)
        self.targets = tuple(targets)
        unknown = [t for t in self.targets if t not in _STRUCTURE_LABELS and t not in _ATOM_LABELS]
        if unknown:
            raise ConfigError(f"unknown target field(s) {unknown}; known: E, Fa, Qa, Q, M2")
        self.cutoff_sr, self.cutoff_lr = cutoff_sr, cutoff_lr
        self.cutoffs = {key: float(c) for key, c in (("sr", cutoff_sr), ("lr", cutoff_lr))
                        if c is not None}
        self.carries_total_charge = bool(total_charge)
        self.max_Za = max_Za
        self._reader = DatabaseReader(self.database)
        self.n_atoms = np.asarray(self._reader.n_atoms, dtype=np.int64)
        if not len(self.n_atoms):
            raise ConfigError(f"{self.database}: no structures to pack")
        self.cache_structures = int(cache_structures)
        self._records = LRUCache(self.cache_structures)

    def __len__(self) -> int:
        return int(self.n_atoms.shape[0])

    def close(self) -> None:
        """Close the database handle and drop the caches (reopens on next use)."""
        self._reader.close()
        self._records = LRUCache(self.cache_structures)

    def describe(self) -> str:
        return (f"pair lists for {len(self)} structures built per batch, structures read "
                f"from {self.database} (up to {self.cache_structures} kept in memory)")

    # ------------------------------------------------------------------ records
    def _record(self, k: int) -> _Record:
        record = self._records.get(k)
        if record is None:
            record = self._read(k)
            self._records.put(k, record)
        return record

    def _read(self, k: int) -> _Record:
        s = self._reader.structure(k)
        source = s.name or f"structure {k}"
        numbers = s.atomic_numbers
        if self.max_Za is not None and len(numbers) and numbers.max() > self.max_Za:
            raise InputError(f"atomic number {int(numbers.max())} is above the model's "
                             f"max_Za {self.max_Za}", source=source)
        labels = {}
        for name in self.targets:
            attr, _ = _STRUCTURE_LABELS.get(name) or _ATOM_LABELS[name]
            value = getattr(s, attr)
            if value is None:
                raise InputError(f"target {name} ({attr}) is missing", source=source)
            labels[name] = np.asarray(value, dtype=np.float64)
        pairs = {}
        for key, cutoff in self.cutoffs.items():
            try:
                pl = structure_pairs(s.positions, s.cell, s.pbc, cutoff)
            except ConfigError as exc:
                raise ConfigError(f"{s.name or 'structure'}: {exc}") from None
            offsets = None
            if s.is_periodic:
                offsets = (np.zeros((len(pl), 3)) if pl.shift is None
                           else pl.shift.astype(np.float64) @ s.cell)
            pairs[key] = (pl.i, pl.j, offsets)
        return _Record(positions=np.asarray(s.positions), numbers=numbers, labels=labels,
                       total_charge=float(s.total_charge or 0.0), pairs=pairs)

    # ------------------------------------------------------------------ batches
    def batch(self, indices, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> tuple[dict, dict]:
        """Inputs and targets of the structures ``indices``; the fields of
        :meth:`nnpflow.models.batch.PackedGraphs.batch`."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        records = [self._record(int(k)) for k in idx]
        counts = np.array([len(r.numbers) for r in records], dtype=np.int64)
        new_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
        inputs = {
            "N": torch.from_numpy(counts),
            "Ra": torch.from_numpy(np.concatenate([r.positions for r in records])).to(dtype),
            "Za": torch.from_numpy(np.concatenate([r.numbers for r in records])),
            "batch_seg": torch.from_numpy(np.repeat(np.arange(idx.shape[0]), counts)),
        }
        if self.carries_total_charge:
            inputs["Q"] = torch.from_numpy(
                np.array([r.total_charge for r in records], dtype=np.float64)).to(dtype)
        for key, suffix in (("sr", "_sr"), ("lr", "")):
            if key not in self.cutoffs:
                continue
            per = [r.pairs[key] for r in records]
            pc = np.array([len(p[0]) for p in per], dtype=np.int64)
            shift = np.repeat(new_start, pc)
            inputs["idx_i" + suffix] = torch.from_numpy(np.concatenate([p[0] for p in per]) + shift)
            inputs["idx_j" + suffix] = torch.from_numpy(np.concatenate([p[1] for p in per]) + shift)
            if any(p[2] is not None for p in per):
                offsets = np.concatenate([np.zeros((len(p[0]), 3)) if p[2] is None else p[2]
                                          for p in per])
                inputs["offsets" + suffix] = torch.from_numpy(offsets).to(dtype)
        targets = {}
        for name in self.targets:
            values = [r.labels[name] for r in records]
            table = np.concatenate(values) if name in _ATOM_LABELS else np.stack(values)
            targets[name] = torch.from_numpy(np.ascontiguousarray(table)).to(dtype)
        if device is not None and torch.device(device).type != "cpu":
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        return inputs, targets

    def structures(self, indices: Iterable[int]) -> list:
        """The :class:`~nnpflow.structure.Structure` s ``indices`` (read from the database)."""
        return self._reader.structures(int(k) for k in indices)


def lazy_for_model(database: str | os.PathLike, model, targets: Iterable[str] = (),
                   total_charge: bool = False, cache_structures: int | None = None
                   ) -> LazyGraphs:
    """:class:`LazyGraphs` with the pair lists a :class:`~nnpflow.models.stack.LayerStack`
    needs (cache: :data:`DEFAULT_CACHE_STRUCTURES` structures unless given)."""
    req = model.requirements
    if cache_structures is None:
        cache_structures = DEFAULT_CACHE_STRUCTURES
    return LazyGraphs(database, cutoff_sr=req["cutoff_sr"], cutoff_lr=req["cutoff_lr"],
                      targets=targets, total_charge=total_charge, max_Za=model.max_Za,
                      cache_structures=cache_structures)
