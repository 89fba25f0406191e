"""``StructureDataset``: structures in memory, features computed on demand."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..energy_reference import EnergyFilter, reference_energy
from ..structure_checks import check_descriptor_species
from .base import FeatureDataset, structure_sample


def load_structures(structures: Any, descriptor: Any, max_energy: float | None,
                    atomic_energies: Mapping[str, float] | None, show_progress: bool = False
                    ) -> tuple[list, list]:
    """Read ``structures`` (paths, ``Structure``/``ase.Atoms`` objects or source
    collections), check their species against ``descriptor`` and apply the
    ``max_energy`` filter (referenced energy per atom, eV/atom).

    Returns ``(kept structures, filtered)`` with ``filtered`` a list of
    ``nnpflow.sources.Rejection``.  Bad input raises ``InputError``.
    Structures without energies are accepted (e.g. for prediction) unless
    ``max_energy`` is set.
    """
    from ..sources import Rejection, as_source_collection

    collection = as_source_collection(structures, require_energy=False)
    filt = EnergyFilter(max_energy, atomic_energies)
    listed = list(descriptor.species)
    allowed = set(listed)

    def check(s) -> None:
        check_descriptor_species(s, listed, allowed)

    kept, filtered = [], []
    for s in collection.iter_structures(check=check, show_progress=show_progress):
        reason = filt.reason_to_reject(s)
        if reason is None:
            kept.append(s)
        else:
            filtered.append(Rejection(s.name, reason))
    return kept, filtered


class StructureDataset(FeatureDataset):
    """Structures held in memory; features (and, for force-view samples,
    descriptor derivatives) computed on the fly, batched per fetch.

    Parameters
    ----------
    structures:
        File paths, ``nnpflow.Structure`` / ``ase.Atoms`` objects, or source
        collections (e.g. ``TarArchiveXSFSourceCollection``), or a mixture.
    descriptor:
        The ``ChebyshevDescriptor``.
    max_energy:
        Keep structures whose referenced energy per atom ``(E - sum E_ref)/N``
        is at most this (eV/atom); ``None`` keeps all.
    atomic_energies:
        ``{species: eV}`` reference energies owned by the dataset (all zero when
        omitted); also used by training targets.
    dtype:
        Torch dtype of ``features`` and ``forces`` in samples (float32 default).
    show_progress:
        Progress bar while reading the structures.
    """

    def __init__(self, structures: Any, descriptor: Any, max_energy: float | None = None,
                 atomic_energies: Mapping[str, float] | None = None, *,
                 dtype: Any = torch.float32, show_progress: bool = False):
        self._init_common(descriptor, atomic_energies, dtype)
        self.max_energy = max_energy
        self.structures, self.filtered = load_structures(structures, descriptor, max_energy,
                                                         self.atomic_energies, show_progress)
        self._lookup = {s: i for i, s in enumerate(descriptor.species)}
        self._has_forces = np.array([s.forces is not None for s in self.structures], dtype=bool)
        self._energies = np.array([np.nan if s.energy is None else s.energy
                                   for s in self.structures], dtype=np.float64)
        self._n_atoms = np.array([s.n_atoms for s in self.structures], dtype=np.int64)
        self._refs = np.array([reference_energy(s.species, self.atomic_energies)
                               for s in self.structures], dtype=np.float64)
        self._init_selection()

    def __len__(self) -> int:
        return len(self.structures)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} structures)"

    def has_forces(self) -> np.ndarray:
        return self._has_forces

    def energies(self) -> np.ndarray:
        return self._energies

    def n_atoms(self) -> np.ndarray:
        return self._n_atoms

    def reference_energies(self) -> np.ndarray:
        return self._refs

    def compositions(self, species) -> np.ndarray:
        col = {s: t for t, s in enumerate(species)}
        out = np.zeros((len(self), len(col)), dtype=np.int64)
        for i, st in enumerate(self.structures):
            for sym, n in st.composition().items():
                if sym in col:
                    out[i, col[sym]] = n
        return out

    def species_index(self, i: int) -> np.ndarray:
        return np.array([self._lookup[x] for x in self.structures[i].species], dtype=np.int64)

    def _features(self, indices: list[int]) -> list[torch.Tensor]:
        """Energy-view features: runtime cache, else batched featurisation."""
        cache = self.runtime_caches.features
        out, missing = _cache_hits(cache, indices)
        if missing:
            feats = self.descriptor.featurize_batch([self.structures[indices[k]] for k in missing])
            for k, f in zip(missing, feats):
                f = f.detach().to(self.dtype)
                out[k] = f
                if cache is not None:
                    cache.put(indices[k], f)
        return out

    def _force_payloads(self, indices: list[int]) -> list[tuple[torch.Tensor, Any]]:
        from ..database.featurize import split_with_derivatives
        cache = self.runtime_caches.force_payloads
        out, missing = _cache_hits(cache, indices)
        if missing:
            batch = [self.structures[indices[k]] for k in missing]
            feats, ders = split_with_derivatives(
                self.descriptor.featurize_batch_with_derivatives(batch), len(batch))
            for k, f, d in zip(missing, feats, ders):
                payload = (f.detach().to(self.dtype), d)
                out[k] = payload
                if cache is not None:
                    cache.put(indices[k], payload)
        return out

    def _samples(self, indices: list[int], use_forces: list[bool]) -> list[dict]:
        energy_k = [k for k, u in enumerate(use_forces) if not u]
        force_k = [k for k, u in enumerate(use_forces) if u]
        out: list[dict | None] = [None] * len(indices)
        if energy_k:
            feats = self._features([indices[k] for k in energy_k])
            for k, f in zip(energy_k, feats):
                i = indices[k]
                out[k] = structure_sample(i, self.structures[i], f, self.species_index(i),
                                          self._refs[i], self.dtype, False)
        if force_k:
            payloads = self._force_payloads([indices[k] for k in force_k])
            for k, (f, d) in zip(force_k, payloads):
                i = indices[k]
                out[k] = structure_sample(i, self.structures[i], f, self.species_index(i),
                                          self._refs[i], self.dtype, True, d)
        return out


def _cache_hits(cache: Any, indices: list[int]) -> tuple[list[Any], list[int]]:
    """Entries of ``cache`` (``None``: no cache) for ``indices``: the list of hits
    (``None`` where missing) and the positions in ``indices`` that missed."""
    out: list[Any] = [None] * len(indices)
    missing = []
    for k, i in enumerate(indices):
        hit = cache.get(i) if cache is not None else None
        if hit is None:
            missing.append(k)
        else:
            out[k] = hit
    return out, missing
