"""``CachedStructureDataset``: features computed once, eagerly, kept in memory."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..database.statistics import Moments, group_moments
from .base import structure_sample
from .structure_dataset import StructureDataset


class CachedStructureDataset(StructureDataset):
    """Energy-only dataset with all features precomputed at construction.

    Takes the parameters of :class:`StructureDataset`; ``show_progress`` shows
    the featurisation.  Features of all structures are stored as one (A, F)
    tensor with offsets, so ``Subset``s of this dataset reuse the same cache and
    :meth:`get_batch` gathers a batch with one indexing operation.  Samples
    always have ``use_forces=False`` (reference forces are still included).
    """

    force_capable = False

    def __init__(self, structures: Any, descriptor: Any, max_energy: float | None = None,
                 atomic_energies: Mapping[str, float] | None = None, *,
                 dtype: Any = torch.float32, show_progress: bool = False,
                 batch_size: int = 64):
        super().__init__(structures, descriptor, max_energy, atomic_energies, dtype=dtype,
                         show_progress=False)
        self._atom_offset = np.concatenate(([0], np.cumsum(self._n_atoms))).astype(np.int64)
        n_feat = int(descriptor.n_features)
        self._all_features = torch.empty((int(self._atom_offset[-1]), n_feat), dtype=self.dtype)
        self._all_species = np.concatenate(
            [self.species_index(i) for i in range(len(self))]) if len(self) else \
            np.zeros(0, dtype=np.int64)
        bar = None
        if show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(self), unit="structure", desc="featurizing")
        try:
            for lo in range(0, len(self), batch_size):
                hi = min(len(self), lo + batch_size)
                feats = descriptor.featurize_batch(self.structures[lo:hi])
                for i, f in zip(range(lo, hi), feats):
                    self._all_features[self._atom_offset[i]:self._atom_offset[i + 1]] = \
                        f.detach().to(self.dtype)
                if bar is not None:
                    bar.update(hi - lo)
        finally:
            if bar is not None:
                bar.close()

    def set_force_selection(self, selection: Any = None) -> None:
        if selection is None or selection is False:
            return
        super().set_force_selection(selection)  # raises for any non-empty selection

    def features(self, i: int) -> torch.Tensor:
        """Cached (N, F) features of structure ``i`` (a view)."""
        return self._all_features[self._atom_offset[i]:self._atom_offset[i + 1]]

    def _samples(self, indices: list[int], use_forces: list[bool]) -> list[dict]:
        return [structure_sample(i, self.structures[i], self.features(i),
                                 self._all_species[self._atom_offset[i]:self._atom_offset[i + 1]],
                                 self._refs[i], self.dtype, False) for i in indices]

    def get_batch(self, indices: Iterable[int], use_forces: bool | None = None):
        """Vectorised energy-view batch (one gather of the cached features)."""
        from .collate import batch_from_arrays
        if use_forces:
            raise ValueError("CachedStructureDataset is energy-only: it has no force view")
        idx = np.asarray(list(indices), dtype=np.int64)
        starts = self._atom_offset[idx]
        counts = self._n_atoms[idx]
        total = int(counts.sum())
        rel = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = np.repeat(starts, counts) + rel
        rows_t = torch.from_numpy(rows)
        forces = torch.zeros((total, 3), dtype=self.dtype)
        has_f = self._has_forces[idx]
        positions = np.concatenate([self.structures[i].positions for i in idx]) if len(idx) \
            else np.zeros((0, 3))
        if has_f.any():
            pos = 0
            for i, n in zip(idx, counts):
                s = self.structures[i]
                if s.forces is not None:
                    forces[pos:pos + n] = torch.from_numpy(s.forces)
                pos += n
        return batch_from_arrays(
            features=self._all_features.index_select(0, rows_t),
            species_index=self._all_species[rows], n_atoms=counts,
            energy=self._energies[idx], reference_energy=self._refs[idx], forces=forces,
            has_forces=has_f, positions=positions, index=idx,
            names=[self.structures[i].name for i in idx])

    def feature_statistics(self, indices=None) -> dict[str, dict[str, Any]]:
        """Exact per-species statistics of the cached features over ``indices``."""
        idx = (np.arange(len(self)) if indices is None
               else np.asarray(list(indices), dtype=np.int64))
        species = list(self.descriptor.species)
        f = int(self.descriptor.n_features)
        total = [Moments.empty((f,)) for _ in species]
        step = 4096
        for lo in range(0, len(idx), step):
            part = idx[lo:lo + step]
            counts = self._n_atoms[part]
            rows = (np.repeat(self._atom_offset[part], counts)
                    + np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts))
            x = self._all_features[torch.from_numpy(rows)].double().numpy()
            c, m, m2 = group_moments(x, self._all_species[rows], len(species))
            for t in range(len(species)):
                if c[t]:
                    total[t] = total[t].merge(Moments(int(c[t]), m[t], m2[t],
                                                      np.full(f, np.inf), np.full(f, -np.inf)))
        return {s: {"count": total[t].count, "mean": np.array(total[t].mean),
                    "std": np.array(total[t].std)} for t, s in enumerate(species)}
