"""Behaviour shared by the datasets of the aenet PyTorch dataset specification
(aenet-python's torch_training docs): keys, views, samples, selections.

Sample dicts (``dataset[i]``), units eV, Å, eV/Å:

=====================  ==========================================================
``index``              int, index in this dataset
``name``               str, source label
``features``           Tensor (N, F), raw (unnormalised) features, ``dtype``
``species``            list[str], length N
``species_index``      LongTensor (N,), index into ``descriptor.species``
``positions``          Tensor (N, 3) float64, Å
``cell``               Tensor (3, 3) float64 or None; ``pbc`` BoolTensor (3,)
``n_atoms``            int
``energy``             float, total energy in eV (NaN when missing)
``has_energy``         bool
``reference_energy``   float, sum of the dataset's ``atomic_energies`` (eV)
``forces``             Tensor (N, 3) ``dtype``, eV/Å, or None
``use_forces``         bool: this is a force-view sample
``derivatives``        ``DescriptorDerivatives`` of the force view, else None
=====================  ==========================================================

Views.  ``dataset[i]`` gives the force view for structures with forces that are
in the dataset's *force selection* (all of them by default) and the energy view
otherwise; ``dataset[(i, True)]`` / ``dataset[(i, False)]`` ask for a view
explicitly (a structure without forces always gets the energy view).  The
trainer changes the selection per epoch with :meth:`set_force_selection`; the
selection lives in shared memory, so persistent DataLoader workers see it
(change it only between epochs, before iterating the loader).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..database.statistics import Moments
from .runtime_cache import RuntimeCaches


def _as_torch_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        out = dtype
    else:
        out = {"float32": torch.float32, "float64": torch.float64, "float": torch.float32,
               "double": torch.float64}.get(str(dtype).replace("torch.", ""))
    if out not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return out


class FeatureDataset(torch.utils.data.Dataset):
    """Base class of :class:`StructureDataset`, :class:`CachedStructureDataset`
    and :class:`HDF5StructureDataset` (see the module doc for samples and views).

    Subclasses set ``descriptor``, ``atomic_energies``, ``dtype`` and call
    :meth:`_init_selection` once their length is known; they implement
    ``__len__``, :meth:`_samples`, :meth:`has_forces`, :meth:`energies`,
    :meth:`n_atoms` and :meth:`reference_energies`.
    """

    #: whether samples can have the force view
    force_capable: bool = True

    def _init_common(self, descriptor: Any, atomic_energies: Any, dtype: Any) -> None:
        self.descriptor = descriptor
        self.atomic_energies: dict[str, float] = {str(k): float(v) for k, v in
                                                  dict(atomic_energies or {}).items()}
        self.dtype = _as_torch_dtype(dtype)
        self.runtime_caches = RuntimeCaches()
        self._force_mask: torch.Tensor | None = None

    def _init_selection(self) -> None:
        mask = torch.from_numpy(np.asarray(self.has_forces(), dtype=bool).copy())
        if not self.force_capable:
            mask.zero_()
        self._force_mask = mask.share_memory_()

    # -------------------------------------------------------------- pickling
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["runtime_caches"] = self.runtime_caches.fresh()
        return state

    # ------------------------------------------------------------ selections
    def set_force_selection(self, selection: Any = None) -> None:
        """Which structures get the force view from ``dataset[i]``.

        ``None`` or ``True``: every structure with forces; ``False``: none
        (energy-only); a bool mask of length ``len(self)`` or a sequence of
        indices: those (structures without forces never get the force view).
        """
        has = torch.from_numpy(np.asarray(self.has_forces(), dtype=bool))
        if selection is None or selection is True:
            new = has.clone()
        elif selection is False:
            new = torch.zeros(len(self), dtype=torch.bool)
        else:
            sel = np.asarray(selection)
            if sel.dtype == bool:
                if sel.shape != (len(self),):
                    raise ValueError(f"force selection mask has shape {sel.shape}, "
                                     f"expected ({len(self)},)")
                new = torch.from_numpy(sel.copy()) & has
            else:
                new = torch.zeros(len(self), dtype=torch.bool)
                idx = torch.as_tensor(sel.astype(np.int64).reshape(-1))
                if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
                    raise IndexError("force selection index out of range")
                new[idx] = True
                new &= has
        if not self.force_capable and bool(new.any()):
            raise ValueError(f"{type(self).__name__} is energy-only: it has no force view")
        self._force_mask.copy_(new)

    @property
    def force_selection(self) -> np.ndarray:
        """(len,) bool: structures that get the force view by default."""
        return self._force_mask.numpy().copy()

    # ------------------------------------------------------------------ keys
    def _resolve(self, key: Any) -> tuple[int, bool]:
        if isinstance(key, tuple):
            if len(key) != 2:
                raise TypeError("dataset key tuples are (index, use_forces)")
            i, view = key
        else:
            i, view = key, None
        i = int(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} structures")
        if view is None:
            use = bool(self._force_mask[i])
        else:
            use = bool(view) and self.force_capable and bool(self.has_forces()[i])
            if bool(view) and not self.force_capable:
                raise ValueError(f"{type(self).__name__} is energy-only: it has no force view")
        return i, use

    def __getitem__(self, key: Any):
        if isinstance(key, list):
            return self.__getitems__(key)
        i, use = self._resolve(key)
        return self._samples([i], [use])[0]

    def __getitems__(self, keys: Sequence[Any]) -> list[dict]:
        """Batched fetch (used by ``torch.utils.data.DataLoader``)."""
        resolved = [self._resolve(k) for k in keys]
        return self._samples([r[0] for r in resolved], [r[1] for r in resolved])

    def sample(self, i: int, use_forces: bool | None = None) -> dict:
        """``dataset[i]`` with an explicit view (``None``: the selection's)."""
        return self[(i, use_forces) if use_forces is not None else i]

    def samples(self, indices: Iterable[int], use_forces: bool | None = None) -> list[dict]:
        keys = [(i, use_forces) if use_forces is not None else i for i in indices]
        return self.__getitems__(keys)

    def get_batch(self, indices: Iterable[int], use_forces: bool | None = None):
        """The collated :class:`~nnpflow.datasets.collate.Batch` of ``indices``."""
        from .collate import collate_samples
        return collate_samples(self.samples(indices, use_forces))

    def _samples(self, indices: list[int], use_forces: list[bool]) -> list[dict]:
        raise NotImplementedError

    # ---------------------------------------------------------- per-structure
    def has_forces(self) -> np.ndarray:
        """(len,) bool: structure has reference forces."""
        raise NotImplementedError

    def energies(self) -> np.ndarray:
        """(len,) total energies in eV (NaN where missing)."""
        raise NotImplementedError

    def n_atoms(self) -> np.ndarray:
        """(len,) atoms per structure."""
        raise NotImplementedError

    def reference_energies(self) -> np.ndarray:
        """(len,) sum of ``atomic_energies`` over each structure's atoms, eV."""
        raise NotImplementedError

    def compositions(self, species: Sequence[str]) -> np.ndarray:
        """(len, T) atom counts of each of ``species`` in every structure."""
        raise NotImplementedError

    def set_atomic_energies(self, atomic_energies: dict[str, float]) -> None:
        """Use ``atomic_energies`` (eV per species) as the references from now on
        (e.g. fitted ones): ``reference_energies()`` and the samples' reference
        energies follow.  Raises ``ConfigError`` when a species of the dataset
        has none.  Call it before creating DataLoaders (workers copy the dataset)."""
        from ..errors import ConfigError
        refs = {str(k): float(v) for k, v in dict(atomic_energies).items()}
        species = sorted(refs)
        comp = self.compositions(species)
        uncovered = comp.sum(axis=1) != self.n_atoms()
        if uncovered.any():
            i = int(np.argmax(uncovered))
            raise ConfigError(f"atomic_energies has no entry for a species of structure {i} "
                              f"(given: {', '.join(species)})")
        self.atomic_energies = refs
        self._refs = comp @ np.array([refs[s] for s in species], dtype=np.float64) \
            if species else np.zeros(len(self))

    def referenced_energies_per_atom(self) -> np.ndarray:
        """(len,) ``(E - sum E_ref) / N`` in eV/atom (NaN where missing)."""
        return (self.energies() - self.reference_energies()) / self.n_atoms()

    # ------------------------------------------------------------ statistics
    def feature_statistics(self, indices: Sequence[int] | None = None
                           ) -> dict[str, dict[str, Any]]:
        """Exact per-species statistics of the raw features over ``indices``
        (all when ``None``): ``{species: {"count", "mean" (F,), "std" (F,)}}``,
        population std.  Generic path: featurises the structures (energy view).
        """
        idx = range(len(self)) if indices is None else [int(i) for i in indices]
        species = list(self.descriptor.species)
        f = int(self.descriptor.n_features)
        total = [Moments.empty((f,)) for _ in species]
        idx = list(idx)
        step = 64
        for lo in range(0, len(idx), step):
            for s in self.samples(idx[lo:lo + step], use_forces=False):
                x = s["features"].detach().cpu().numpy().astype(np.float64)
                si = s["species_index"].numpy()
                for t in range(len(species)):
                    rows = x[si == t]
                    if len(rows):
                        total[t] = total[t].merge(Moments.of(rows))
        return {s: {"count": total[t].count, "mean": np.array(total[t].mean),
                    "std": np.array(total[t].std)} for t, s in enumerate(species)}


def structure_sample(index: int, structure, features: torch.Tensor, species_index: np.ndarray,
                     reference_energy: float, dtype: torch.dtype, use_forces: bool,
                     derivatives: Any = None) -> dict:
    """A sample dict from a ``Structure`` and its features (see module doc)."""
    energy = structure.energy
    return {
        "index": index,
        "name": structure.name,
        "features": features.to(dtype),
        "species": list(structure.species),
        "species_index": torch.as_tensor(species_index, dtype=torch.long),
        "positions": torch.from_numpy(np.asarray(structure.positions, dtype=np.float64)),
        "cell": None if structure.cell is None else torch.from_numpy(np.array(structure.cell)),
        "pbc": torch.from_numpy(np.asarray(structure.pbc, dtype=bool).copy()),
        "n_atoms": structure.n_atoms,
        "energy": float("nan") if energy is None else float(energy),
        "has_energy": energy is not None,
        "reference_energy": float(reference_energy),
        "forces": (None if structure.forces is None
                   else torch.from_numpy(np.asarray(structure.forces)).to(dtype)),
        "use_forces": bool(use_forces),
        "derivatives": derivatives,
    }
