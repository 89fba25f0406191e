"""What every model family predicts for a list of structures, and committees of them.

:class:`PredictionResult` is the one prediction record of nnpflow (API,
evaluation, calculator): energies (eV), forces (eV/Å) and the data's reference
labels.  :func:`committee_mean` is the one committee rule: the members' mean
with their spread (population standard deviation over members).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["PredictionResult", "committee_mean", "empty_result", "result_for_structures"]


@dataclass
class PredictionResult:
    """Predictions for S structures (eV, Å, eV/Å).

    ``energies`` (S,) total energies; ``forces`` one (N_s, 3) array per
    structure (``None`` without force evaluation); ``n_atoms`` (S,);
    ``names`` source labels; ``species`` element symbols per structure.
    ``reference_energies`` (S,) (NaN where unknown) and ``reference_forces``
    (``None`` entries where unknown) hold the data's labels when the inputs
    had them.  Committees add ``energy_std`` (S,) and ``forces_std`` (spread
    of the members, population std) and ``member_energies`` (M, S).
    """

    energies: np.ndarray
    forces: list | None
    n_atoms: np.ndarray
    names: list[str]
    species: list[list[str]]
    reference_energies: np.ndarray | None = None
    reference_forces: list | None = None
    energy_std: np.ndarray | None = None
    forces_std: list | None = None
    member_energies: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    @property
    def energies_per_atom(self) -> np.ndarray:
        return self.energies / self.n_atoms


def empty_result() -> PredictionResult:
    """A prediction of no structures."""
    return PredictionResult(energies=np.zeros(0), forces=[], n_atoms=np.zeros(0, np.int64),
                            names=[], species=[], reference_energies=np.zeros(0),
                            reference_forces=[])


def result_for_structures(structures: Sequence, energies, forces: list | None
                          ) -> PredictionResult:
    """A :class:`PredictionResult` of ``structures`` (``nnpflow.Structure``) with the
    predicted ``energies`` (S,) eV and ``forces`` ([(N_s, 3)] eV/Å or ``None``) and
    the structures' own labels as references."""
    return PredictionResult(
        energies=np.asarray(energies, dtype=np.float64).reshape(-1),
        forces=None if forces is None else [np.asarray(f, dtype=np.float64) for f in forces],
        n_atoms=np.array([s.n_atoms for s in structures], dtype=np.int64),
        names=[s.name for s in structures], species=[list(s.species) for s in structures],
        reference_energies=np.array([np.nan if s.energy is None else s.energy
                                     for s in structures], dtype=np.float64),
        reference_forces=[None if s.forces is None else np.asarray(s.forces, dtype=np.float64)
                          for s in structures])


def committee_mean(results: Sequence[PredictionResult]) -> PredictionResult:
    """The committee's prediction: the mean of its members' energies (eV) and
    forces (eV/Å) with their spread, the population standard deviation over
    members (``energy_std`` (S,) eV, ``forces_std`` [(N_s, 3)] eV/Å), and
    ``member_energies`` (M, S).  One member gives itself with zero spread."""
    results = list(results)
    if not results:
        raise ValueError("a committee needs at least one member's prediction")
    first = results[0]
    for k, r in enumerate(results[1:], start=1):
        if list(r.names) != list(first.names) or not np.array_equal(r.n_atoms, first.n_atoms):
            raise ValueError(f"member {k} predicted other structures than member 0")
    energies = np.stack([np.asarray(r.energies, dtype=np.float64) for r in results])
    out = PredictionResult(energies=energies.mean(axis=0), forces=None, n_atoms=first.n_atoms,
                           names=list(first.names), species=list(first.species),
                           reference_energies=first.reference_energies,
                           reference_forces=first.reference_forces,
                           energy_std=energies.std(axis=0), member_energies=energies)
    if all(r.forces is not None for r in results):
        means, stds = [], []
        for k in range(len(first)):
            f = np.stack([np.asarray(r.forces[k], dtype=np.float64) for r in results])
            means.append(f.mean(axis=0))
            stds.append(f.std(axis=0))
        out.forces, out.forces_std = means, stds
    return out
