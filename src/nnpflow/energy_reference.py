"""Atomic reference energies and the ``max_energy`` filter of aenet's PyTorch
training (aenet-python's torch_training docs).

The referenced (cohesive or formation) energy per atom of a structure is
``(E - sum_i E_ref[species_i]) / N`` in eV/atom.  Without ``atomic_energies``
all references are zero, so the filter applies to ``E / N`` as given.
:func:`fit_atomic_energies` fits the references by least squares on total
energies (``atomic_energies: fit``).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Mapping

import numpy as np

from .errors import ConfigError, InputError
from .structure import Structure, element_symbol

#: ``Structure.info`` key under which a reader records atomic references it has
#: already subtracted from ``Structure.energy`` (Enerzyme's ``atomic_energy``
#: transform): ``{"file": path, "energies": {species: eV}, "total": eV}``.
SUBTRACTED_REFERENCE_KEY = "atomic_energy_reference"


def reference_energy(species, atomic_energies: Mapping[str, float] | None) -> float:
    """Sum of atomic reference energies (eV) over ``species``; 0 without references.

    Raises ``ConfigError`` when a species has no reference while others do.
    """
    if not atomic_energies:
        return 0.0
    total = 0.0
    for s in species:
        try:
            total += float(atomic_energies[s])
        except KeyError:
            raise ConfigError(
                f"atomic_energies has no entry for species {s!r} "
                f"(given: {', '.join(sorted(atomic_energies))})") from None
    return total


def raw_total_energy(structure: Structure) -> float | None:
    """The structure's total energy (eV) before any reference a reader subtracted.

    ``Structure.energy`` plus the total recorded under
    :data:`SUBTRACTED_REFERENCE_KEY`, or ``Structure.energy`` as is.
    """
    if structure.energy is None:
        return None
    done = structure.info.get(SUBTRACTED_REFERENCE_KEY)
    return structure.energy + (float(done["total"]) if done else 0.0)


def referenced_energy_per_atom(structure: Structure,
                               atomic_energies: Mapping[str, float] | None) -> float:
    """``(E - sum E_ref) / N`` in eV/atom; raises ``InputError`` without an energy.

    References are never subtracted twice: with ``atomic_energies`` given, ``E`` is
    the raw total energy (:func:`raw_total_energy`); without them, a reference a
    reader already subtracted stays the reference.
    """
    if structure.energy is None:
        raise InputError("no total energy to reference", source=structure.name or None)
    if not atomic_energies:
        return structure.energy / structure.n_atoms
    raw = raw_total_energy(structure)
    return (raw - reference_energy(structure.species, atomic_energies)) / structure.n_atoms


class EnergyFilter:
    """Keep structures whose referenced energy per atom is at most ``max_energy``.

    ``max_energy=None`` keeps everything (structures without energies too).
    With a threshold, a structure without an energy is rejected.
    """

    def __init__(self, max_energy: float | None = None,
                 atomic_energies: Mapping[str, float] | None = None):
        if max_energy is not None and not math.isfinite(float(max_energy)):
            raise ConfigError(f"max_energy must be a finite number, got {max_energy!r}")
        self.max_energy = None if max_energy is None else float(max_energy)
        self.atomic_energies = dict(atomic_energies or {})

    def config(self) -> dict:
        return {"max_energy": self.max_energy,
                "atomic_energies": {k: float(v) for k, v in sorted(self.atomic_energies.items())}}

    def reason_to_reject(self, structure: Structure) -> str | None:
        """``None`` when kept, else a sentence saying why it is filtered out."""
        if self.max_energy is None:
            return None
        if structure.energy is None:
            return "no total energy, but max_energy filtering is on"
        e = referenced_energy_per_atom(structure, self.atomic_energies)
        if e > self.max_energy:
            return (f"referenced energy {e:.6g} eV/atom is above "
                    f"max_energy {self.max_energy:.6g} eV/atom")
        return None

    def __call__(self, structure: Structure) -> bool:
        return self.reason_to_reject(structure) is None


def read_atomic_energy_csv(path: str | os.PathLike) -> dict[str, float]:
    """Read an Enerzyme ``atomic_energy`` CSV (columns ``atom_type,atomic_energy``).

    ``atom_type`` may be a symbol or an atomic number.  Errors name the file and line.
    """
    path = os.fspath(path)
    out: dict[str, float] = {}
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot open atomic energy file: {exc.strerror}", source=path) from None
    with fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "atom_type" not in fields or "atomic_energy" not in fields:
            raise InputError("expected CSV columns 'atom_type' and 'atomic_energy', "
                             f"found {fields}", source=path, line=1)
        for row in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            line = reader.line_num
            try:
                symbol = element_symbol(row["atom_type"])
            except InputError as exc:
                raise exc.located(source=path, line=line) from None
            try:
                value = float(row["atomic_energy"])
            except ValueError:
                raise InputError(f"non-numeric atomic_energy {row['atomic_energy']!r}",
                                 source=path, line=line) from None
            if not math.isfinite(value):
                raise InputError(f"non-finite atomic_energy {value!r}", source=path, line=line)
            out[symbol] = value
    if not out:
        raise InputError("no rows", source=path)
    return out


# ------------------------------------------------------------------ fitted references

#: the value of ``atomic_energies`` (workflow and ``TorchTrainingConfig``) that asks
#: for references fitted on the training structures
FIT = "fit"


def fit_atomic_energies(composition, energies, species) -> dict:
    """Per-species reference energies by least squares (eV).

    ``composition``: (S, T) atom counts of the ``species`` (T names) in S
    structures; ``energies``: (S,) total energies in eV (NaN entries are left
    out).  Solves ``min_e sum_i (E_i - sum_t n_it e_t)^2`` -- the composition
    matrix against the total energies, as MACE estimates its E0s -- with
    ``numpy.linalg.lstsq`` (the minimum-norm solution when the compositions do
    not determine every reference, e.g. one stoichiometry only).

    Returns ``{"atomic_energies": {species: eV}, "n_structures", "rank",
    "rmse_per_atom"}`` (the per-atom RMSE of ``E - sum n e`` over the fitted
    structures: what a model still has to learn).  Raises ``ConfigError`` when a
    species occurs in none of the structures, or there are none.
    """
    comp = np.asarray(composition, dtype=np.float64)
    e = np.asarray(energies, dtype=np.float64).reshape(-1)
    species = [str(s) for s in species]
    if comp.ndim != 2 or comp.shape != (len(e), len(species)):
        raise ValueError(f"composition of shape {comp.shape} for {len(e)} energies and "
                         f"{len(species)} species")
    keep = np.isfinite(e)
    comp, e = comp[keep], e[keep]
    if not len(e):
        raise ConfigError("atomic_energies: fit needs training structures with energies")
    absent = [s for s, n in zip(species, comp.sum(axis=0)) if n == 0]
    if absent:
        raise ConfigError(f"atomic_energies: fit cannot determine the reference of "
                          f"{', '.join(absent)}: no training structure with an energy "
                          "contains it; give atomic_energies explicitly")
    solution, _, rank, _ = np.linalg.lstsq(comp, e, rcond=None)
    residual = (e - comp @ solution) / comp.sum(axis=1)
    return {"atomic_energies": {s: float(v) for s, v in zip(species, solution)},
            "n_structures": int(len(e)), "rank": int(rank),
            "rmse_per_atom": float(np.sqrt(np.mean(residual ** 2)))}


def is_fit(atomic_energies) -> bool:
    """Whether an ``atomic_energies`` setting asks for fitted references."""
    return isinstance(atomic_energies, str) and atomic_energies == FIT
