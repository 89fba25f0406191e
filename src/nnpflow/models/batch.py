"""Batches for layer-stack models from packed structures with precomputed pair lists.

:class:`PackedGraphs` holds many structures as concatenated arrays (positions,
atomic numbers, labels) plus their pair lists, computed once for the cutoffs a
model needs (its ``requirements``).  ``batch(indices)`` assembles the field dict
of :mod:`nnpflow.models.fields` for any subset with a few vectorised gathers, so
a training step spends no Python time per structure.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, InputError
from ..structure import Structure
from .pairs import structure_pairs

#: per-structure label arrays: name -> (Structure attribute, trailing shape)
_STRUCTURE_LABELS = {"E": ("energy", ()), "Q": ("total_charge", ()), "M2": ("dipole", (3,))}
#: per-atom label arrays
_ATOM_LABELS = {"Fa": ("forces", (3,)), "Qa": ("charges", ())}


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each start/count, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - counts), counts)


class PackedGraphs:
    """Structures packed for batching, with pair lists for given cutoffs.

    Parameters
    ----------
    structures : the structures (positions Å, energies eV, forces eV/Å, ...).
    cutoff_sr : short-range pair cutoff in Å (``None``: no short-range list).
    cutoff_lr : long-range pair cutoff in Å (``math.inf``: all pairs of a
        molecule; ``None``: no long-range list).
    targets : labels to carry (subset of E, Fa, Qa, Q, M2); each structure must have them.
    total_charge : carry the total charge ``Q`` as an input (0 where missing).
    max_Za : reject atomic numbers above this (the model's per-element tables).
    """

    def __init__(self, structures: Sequence[Structure], cutoff_sr: float | None = None,
                 cutoff_lr: float | None = None, targets: Iterable[str] = (),
                 total_charge: bool = False, max_Za: int | None = None,
                 show_progress: bool = False):
        structures = list(structures)
        if not structures:
            raise ConfigError("no structures to pack")
        self.targets = tuple(targets)
        unknown = [t for t in self.targets if t not in _STRUCTURE_LABELS and t not in _ATOM_LABELS]
        if unknown:
            raise ConfigError(f"unknown target field(s) {unknown}; known: E, Fa, Qa, Q, M2")
        self.cutoff_sr, self.cutoff_lr = cutoff_sr, cutoff_lr
        self.n_atoms = np.array([s.n_atoms for s in structures], dtype=np.int64)
        self.atom_ptr = np.concatenate(([0], np.cumsum(self.n_atoms)))
        self.positions = np.concatenate([s.positions for s in structures])
        self.numbers = np.concatenate([s.atomic_numbers for s in structures])
        if max_Za is not None and self.numbers.max() > max_Za:
            atom = int(np.argmax(self.numbers > max_Za))
            k = int(np.searchsorted(self.atom_ptr, atom, "right") - 1)
            raise InputError(f"atomic number {int(self.numbers.max())} is above the model's "
                             f"max_Za {max_Za}", source=structures[k].name or f"structure {k}")
        self.periodic = np.array([s.is_periodic for s in structures])
        self.cells = np.stack([s.cell if s.cell is not None else np.zeros((3, 3))
                               for s in structures])
        self.labels: dict[str, np.ndarray] = {}
        for name in self.targets:
            attr, _ = _STRUCTURE_LABELS.get(name) or _ATOM_LABELS[name]
            values = []
            for k, s in enumerate(structures):
                value = getattr(s, attr)
                if value is None:
                    raise InputError(f"target {name} ({attr}) is missing",
                                     source=s.name or f"structure {k}")
                values.append(np.asarray(value, dtype=np.float64))
            self.labels[name] = (np.concatenate(values) if name in _ATOM_LABELS
                                 else np.stack(values))
        self.total_charge = None
        if total_charge:
            self.total_charge = np.array([s.total_charge or 0.0 for s in structures])
        self.pairs = {}
        for key, cutoff in (("sr", cutoff_sr), ("lr", cutoff_lr)):
            if cutoff is not None:
                self.pairs[key] = self._pack_pairs(structures, float(cutoff), show_progress)
        self._cache: dict = {}

    def _pack_pairs(self, structures, cutoff, show_progress):
        counts, ii, jj, offsets = [], [], [], []
        any_periodic = bool(self.periodic.any())
        for s in tqdm(structures, desc=f"pair lists ({cutoff:g} Å)", disable=not show_progress,
                      leave=False):
            try:
                pl = structure_pairs(s.positions, s.cell, s.pbc, cutoff)
            except ConfigError as exc:
                raise ConfigError(f"{s.name or 'structure'}: {exc}") from None
            counts.append(len(pl))
            ii.append(pl.i)
            jj.append(pl.j)
            if any_periodic:
                offsets.append(np.zeros((len(pl), 3)) if pl.shift is None
                               else pl.shift.astype(np.float64) @ s.cell)
        counts = np.array(counts, dtype=np.int64)
        return {"ptr": np.concatenate(([0], np.cumsum(counts))), "count": counts,
                "i": np.concatenate(ii), "j": np.concatenate(jj),
                "offsets": np.concatenate(offsets) if any_periodic else None}

    def __len__(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def n_pairs(self) -> dict[str, int]:
        return {k: int(v["count"].sum()) for k, v in self.pairs.items()}

    def _float(self, name: str, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        key = (name, dtype)
        if key not in self._cache:
            self._cache[key] = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
        return self._cache[key]

    def batch(self, indices, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> tuple[dict, dict]:
        """Inputs and targets of the structures ``indices`` (field dicts of tensors).

        Inputs: ``N``, ``Ra``, ``Za``, ``batch_seg``, ``Q`` (when carried) and the
        pair lists (``idx_i_sr``/``idx_j_sr``/``offsets_sr``, ``idx_i``/``idx_j``/
        ``offsets``; offsets only when a structure is periodic).  Targets: the
        carried labels.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        counts = self.n_atoms[idx]
        atoms = torch.from_numpy(_ranges(self.atom_ptr[idx], counts))
        new_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
        idx_t = torch.from_numpy(idx)
        inputs = {
            "N": torch.from_numpy(counts),
            "Ra": self._float("Ra", self.positions, dtype).index_select(0, atoms),
            "Za": torch.from_numpy(self.numbers).index_select(0, atoms),
            "batch_seg": torch.from_numpy(np.repeat(np.arange(idx.shape[0]), counts)),
        }
        if self.total_charge is not None:
            inputs["Q"] = self._float("Q_in", self.total_charge, dtype).index_select(0, idx_t)
        for key, suffix in (("sr", "_sr"), ("lr", "")):
            packed = self.pairs.get(key)
            if packed is None:
                continue
            pc = packed["count"][idx]
            sel = _ranges(packed["ptr"][idx], pc)
            shift = np.repeat(new_start, pc)
            inputs["idx_i" + suffix] = torch.from_numpy(packed["i"][sel] + shift)
            inputs["idx_j" + suffix] = torch.from_numpy(packed["j"][sel] + shift)
            if packed["offsets"] is not None:
                inputs["offsets" + suffix] = self._float(
                    "off" + key, packed["offsets"], dtype).index_select(0, torch.from_numpy(sel))
        targets = {}
        for name, values in self.labels.items():
            table = self._float("t" + name, values, dtype)
            targets[name] = table.index_select(0, atoms if name in _ATOM_LABELS else idx_t)
        if device is not None and torch.device(device).type != "cpu":
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        return inputs, targets


def packed_for_model(structures: Sequence[Structure], model, targets: Iterable[str] = (),
                     total_charge: bool = False, show_progress: bool = False) -> PackedGraphs:
    """:class:`PackedGraphs` with the pair lists a
    :class:`~nnpflow.models.stack.LayerStack` needs."""
    req = model.requirements
    return PackedGraphs(structures, cutoff_sr=req["cutoff_sr"], cutoff_lr=req["cutoff_lr"],
                        targets=targets, total_charge=total_charge, max_Za=model.max_Za,
                        show_progress=show_progress)

