"""Collate samples into one batch for vectorised training steps.

A :class:`Batch` concatenates the B samples' atoms (A atoms in all); force-view
samples additionally contribute their ``DescriptorDerivatives``, concatenated
into one object so the trainer contracts all forces of the batch at once::

    G = batch.features.requires_grad_()          # (A, F), normalise as needed
    E_atom = model(G, batch.species_index)       # (A,)
    E = zeros(B).index_add(0, batch.atom_structure, E_atom)
    dE_dG, = autograd.grad(E.sum(), G, create_graph=True)
    F_pred = batch.derivatives.forces(dE_dG[batch.force_atom_index])   # (A_f, 3)
    F_ref = batch.forces[batch.force_atom_index]
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np
import torch


@dataclass
class Batch:
    """B structures with A atoms in all (units eV, Å, eV/Å).

    Attributes
    ----------
    features : Tensor (A, F)
        Raw features of all atoms, in sample order.
    species_index : LongTensor (A,)
        Descriptor species index of each atom.
    atom_structure : LongTensor (A,)
        Batch-local structure index (0..B-1) of each atom.
    n_atoms : LongTensor (B,)
    energy : Tensor (B,) float64
        Total energies, eV (NaN where missing; see ``has_energy``).
    has_energy : BoolTensor (B,)
    reference_energy : Tensor (B,) float64
        Sum of the dataset's atomic reference energies per structure, eV.
    forces : Tensor (A, 3)
        Reference forces, eV/Å (zeros for structures without forces).
    has_forces : BoolTensor (B,)
        Structure has reference forces.
    use_forces : BoolTensor (B,)
        Force-view samples (their derivatives are in ``derivatives``).
    force_mask : BoolTensor (A,)
        Atoms of force-view samples.
    force_atom_index : LongTensor (A_f,)
        ``nonzero(force_mask)``: the atoms, in order, that ``derivatives`` covers.
    derivatives : DescriptorDerivatives or None
        One concatenation of the force-view samples' derivatives (batch order).
    positions : Tensor (A, 3) float64, Å
    index : LongTensor (B,)
        Dataset indices of the samples.
    names : list[str]
    species_groups : list[LongTensor] or None
        ``species_groups[t]`` = ``nonzero(species_index == t)`` for every
        descriptor species t, when the batch was assembled with them (the
        networks then skip that search); ``None`` otherwise.
    """

    features: torch.Tensor
    species_index: torch.Tensor
    atom_structure: torch.Tensor
    n_atoms: torch.Tensor
    energy: torch.Tensor
    has_energy: torch.Tensor
    reference_energy: torch.Tensor
    forces: torch.Tensor
    has_forces: torch.Tensor
    use_forces: torch.Tensor
    force_mask: torch.Tensor
    force_atom_index: torch.Tensor
    derivatives: Any
    positions: torch.Tensor
    index: torch.Tensor
    names: list
    species_groups: list | None = None

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])

    def __len__(self) -> int:
        return self.n_structures

    def to(self, device: Any = None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> "Batch":
        """Move tensors to ``device``; ``dtype`` converts ``features`` and
        ``forces`` (and derivatives, when they support it)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                if dtype is not None and f.name in ("features", "forces"):
                    v = v.to(device=device, dtype=dtype, non_blocking=non_blocking)
                else:
                    v = v.to(device=device, non_blocking=non_blocking)
            elif f.name == "species_groups" and v is not None:
                v = [g.to(device=device, non_blocking=non_blocking) for g in v]
            elif f.name == "derivatives" and v is not None and hasattr(v, "to"):
                kwargs = {}
                if device is not None:
                    kwargs["device"] = device
                if dtype is not None:
                    kwargs["dtype"] = dtype
                if kwargs:
                    v = v.to(**kwargs)
            out[f.name] = v
        return Batch(**out)

    def pin_memory(self) -> "Batch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.pin_memory()
            elif f.name == "species_groups" and v is not None:
                v = [g.pin_memory() for g in v]
            out[f.name] = v
        return Batch(**out)


def collate_samples(samples: Sequence[dict] | Batch) -> Batch:
    """One :class:`Batch` from sample dicts (a ``Batch`` passes through).

    Use as ``DataLoader(dataset, batch_size=..., collate_fn=collate_samples)``.
    """
    if isinstance(samples, Batch):
        return samples
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    n_atoms = torch.tensor([s["n_atoms"] for s in samples], dtype=torch.long)
    b = len(samples)
    features = torch.cat([s["features"] for s in samples])
    dtype = features.dtype
    species_index = torch.cat([s["species_index"] for s in samples])
    atom_structure = torch.repeat_interleave(torch.arange(b), n_atoms)
    use_forces = torch.tensor([bool(s["use_forces"]) for s in samples], dtype=torch.bool)
    has_forces = torch.tensor([s["forces"] is not None for s in samples], dtype=torch.bool)
    forces = torch.cat([s["forces"].to(dtype) if s["forces"] is not None
                        else torch.zeros((s["n_atoms"], 3), dtype=dtype) for s in samples])
    force_mask = torch.repeat_interleave(use_forces, n_atoms)
    derivatives = None
    force_samples = [s for s in samples if s["use_forces"]]
    if force_samples:
        parts = [s["derivatives"] for s in force_samples]
        if any(p is None for p in parts):
            raise ValueError("a force-view sample has no derivatives")
        derivatives = type(parts[0]).concatenate(parts)
    return Batch(
        features=features,
        species_index=species_index,
        atom_structure=atom_structure,
        n_atoms=n_atoms,
        energy=torch.tensor([s["energy"] for s in samples], dtype=torch.float64),
        has_energy=torch.tensor([bool(s["has_energy"]) for s in samples], dtype=torch.bool),
        reference_energy=torch.tensor([s["reference_energy"] for s in samples],
                                      dtype=torch.float64),
        forces=forces,
        has_forces=has_forces,
        use_forces=use_forces,
        force_mask=force_mask,
        force_atom_index=torch.nonzero(force_mask).reshape(-1),
        derivatives=derivatives,
        positions=torch.cat([s["positions"] for s in samples]),
        index=torch.tensor([s["index"] for s in samples], dtype=torch.long),
        names=[s["name"] for s in samples],
    )


def batch_from_arrays(*, features: torch.Tensor, species_index: np.ndarray, n_atoms: np.ndarray,
                      energy: np.ndarray, reference_energy: np.ndarray,
                      forces: torch.Tensor, has_forces: np.ndarray, positions: np.ndarray,
                      index: np.ndarray, names: list[str], use_forces: np.ndarray | None = None,
                      derivatives: Any = None, n_species: int | None = None) -> Batch:
    """A :class:`Batch` from already concatenated arrays (the vectorised path of
    in-memory and persisted-feature datasets); the same batch as
    :func:`collate_samples` of the corresponding samples.

    ``use_forces`` (B,) marks the force-view structures (none when ``None``);
    ``derivatives`` is then one ``DescriptorDerivatives`` of their atoms, in
    batch order.  ``n_species`` (the descriptor's) adds ``species_groups``.
    """
    species_index = np.asarray(species_index, dtype=np.int64)
    groups = None if n_species is None else [
        torch.from_numpy(np.flatnonzero(species_index == t)) for t in range(int(n_species))]
    n_atoms_t = torch.from_numpy(np.asarray(n_atoms, dtype=np.int64))
    b = int(n_atoms_t.shape[0])
    energy = np.asarray(energy, dtype=np.float64)
    if use_forces is None:
        use = torch.zeros(b, dtype=torch.bool)
    else:
        use = torch.from_numpy(np.asarray(use_forces, dtype=bool).copy())
    if bool(use.any()) != (derivatives is not None):
        raise ValueError("derivatives must be given exactly when the batch has force-view "
                         "structures")
    a = int(features.shape[0])
    if derivatives is None:
        force_mask = torch.zeros(a, dtype=torch.bool)
        force_atom_index = torch.zeros(0, dtype=torch.long)
    else:
        force_mask = torch.repeat_interleave(use, n_atoms_t, output_size=a)
        force_atom_index = torch.nonzero(force_mask).reshape(-1)
    return Batch(
        features=features,
        species_index=torch.from_numpy(species_index),
        atom_structure=torch.repeat_interleave(torch.arange(b), n_atoms_t),
        n_atoms=n_atoms_t,
        energy=torch.from_numpy(energy.copy()),
        has_energy=torch.from_numpy(np.isfinite(energy)),
        reference_energy=torch.from_numpy(np.asarray(reference_energy, dtype=np.float64).copy()),
        forces=forces,
        has_forces=torch.from_numpy(np.asarray(has_forces, dtype=bool).copy()),
        use_forces=use,
        force_mask=force_mask,
        force_atom_index=force_atom_index,
        derivatives=derivatives,
        positions=torch.from_numpy(np.asarray(positions, dtype=np.float64)),
        index=torch.from_numpy(np.asarray(index, dtype=np.int64).copy()),
        names=list(names),
        species_groups=groups,
    )


class BatchView(torch.utils.data.Dataset):
    """A view whose items are whole batches: ``view[list_of_indices] -> Batch``.

    Indices are positions in ``dataset`` (which may be a ``Subset``); batches come
    from the base dataset's ``get_batch`` (vectorised for in-memory and
    persisted-feature energy batches).  ``use_forces``: ``None`` follows the
    dataset's force selection, ``True``/``False`` force a view.
    """

    def __init__(self, dataset: Any, use_forces: bool | None = None):
        from .split import subset_indices
        self.base, self.indices = subset_indices(dataset)
        self.use_forces = use_forces

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, batch_indices) -> Batch:
        idx = self.indices[np.asarray(batch_indices, dtype=np.int64)]
        return self.base.get_batch(idx, self.use_forces)


def batch_loader(dataset: Any, batch_size: int, *, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = None,
                 use_forces: bool | None = None, **loader_kwargs):
    """A ``DataLoader`` yielding :class:`Batch` objects assembled per batch by the
    dataset (one ``get_batch`` call per batch instead of one fetch per sample).

    ``shuffle`` draws a new permutation each epoch from a generator seeded with
    ``seed``; ``loader_kwargs`` go to ``DataLoader`` (``num_workers``,
    ``persistent_workers``, ``prefetch_factor``, ``pin_memory``, ...).
    """
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
    view = BatchView(dataset, use_forces)
    if shuffle:
        gen = torch.Generator()
        if seed is not None:
            gen.manual_seed(int(seed))
        inner = RandomSampler(range(len(view)), generator=gen)
    else:
        inner = SequentialSampler(range(len(view)))
    sampler = BatchSampler(inner, int(batch_size), drop_last)
    return DataLoader(view, sampler=sampler, batch_size=None, collate_fn=collate_samples,
                      **loader_kwargs)
