"""ASE calculator for saved nnpflow models.

``NNPCalculator(model_file)`` gives ``energy``, ``free_energy`` (the same
number: the models have no electronic entropy) in eV and ``forces`` in eV/Å
for any model file nnpflow writes:

* ANN potentials (``TorchANNPotential.save``, schema ``nnpflow.ann_potential``);
* layer-stack models such as SchNet (``nnpflow.models.model_file``, schema
  ``nnpflow.layer_stack``; forces need the model's ``Force`` layer).

A list of files is a committee: the results are the members' mean, and
``calc.results`` also holds ``energy_std`` (eV), ``forces_std`` ((N, 3) eV/Å,
population std over members) and ``committee_energies`` ((M,) eV).

    from nnpflow.calculator import NNPCalculator
    atoms.calc = NNPCalculator("results/models/ann/member_0/model.pt")
    atoms.get_potential_energy(), atoms.get_forces()

Models are evaluated in float64 by default (``dtype="float32"`` keeps the
stored precision for speed); files load with ``torch.load(weights_only=True)``
and are checked before use (:mod:`nnpflow.models.model_checks`).

Each calculation runs with ``threads`` torch CPU threads (default 1), set for the
call and restored afterwards.  One thread is the right choice for the small
systems of molecular dynamics: torch's default (one thread per core) makes a
56-atom step several times slower when the cores are busy with other work,
and it also suits several calculators in parallel processes.  Give
``threads=N`` for large systems on an otherwise idle machine.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .structure import Structure

__all__ = ["NNPCalculator", "load_model"]


class _Model:
    """``model(structure, forces) -> (energy eV, forces (N, 3) eV/Å or None)`` of
    any model family (:class:`nnpflow.models.registry.LoadedModel` underneath)."""

    def __init__(self, loaded):
        self.loaded = loaded
        self.has_forces = loaded.has_forces

    @property
    def metadata(self) -> dict:
        return self.loaded.metadata

    def predict(self, structures, forces: bool = True):
        """A :class:`~nnpflow.models.prediction_result.PredictionResult` of several
        structures in one batch."""
        return self.loaded.predict(structures, forces, max(len(structures), 1))

    def __call__(self, structure: Structure, forces: bool):
        r = self.loaded.predict([structure], forces, 1)
        return float(r.energies[0]), (np.asarray(r.forces[0]) if forces else None)


def load_model(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float64):
    """A callable ``model(structure, forces) -> (energy eV, forces (N, 3) or None)``
    for an nnpflow model file of any family (:mod:`nnpflow.models.registry`)."""
    from .models.registry import load_model as load
    return _Model(load(path, device=device, dtype=dtype))


def committee_results(energies: Sequence[float], forces: Sequence | None,
                      committee: bool) -> dict:
    """ASE results of one structure from each member's energy (eV) and forces
    ((N, 3) eV/Å, or ``None``): the committee mean
    (:func:`nnpflow.models.prediction_result.committee_mean`), with ``energy_std``,
    ``forces_std`` and ``committee_energies`` when ``committee``."""
    from .models.prediction_result import PredictionResult, committee_mean
    n = 0 if not forces else int(np.asarray(forces[0]).shape[0])
    members = [PredictionResult(energies=np.array([e], dtype=np.float64),
                                forces=None if forces is None else [np.asarray(f)],
                                n_atoms=np.array([n]), names=[""], species=[[]])
               for e, f in zip(energies, forces if forces is not None else [None] * len(energies))]
    mean = committee_mean(members)
    out = {"energy": float(mean.energies[0]), "free_energy": float(mean.energies[0])}
    if forces is not None:
        out["forces"] = mean.forces[0]
    if committee:
        out["energy_std"] = float(mean.energy_std[0])
        out["committee_energies"] = mean.member_energies[:, 0]
        if forces is not None:
            out["forces_std"] = mean.forces_std[0]
    return out


class NNPCalculator(Calculator):
    """ASE calculator of one nnpflow model file, or the mean of several (a committee).

    Parameters
    ----------
    model_file : path or list of paths.
    device : ``"cpu"`` or ``"cuda"``.
    dtype : ``"float64"`` (default) or ``"float32"``.
    threads : torch CPU threads of each calculation (default 1; see the module
        docstring); the caller's setting is restored after each call.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model_file: str | os.PathLike | Sequence[str | os.PathLike],
                 device: str = "cpu", dtype: str = "float64", threads: int = 1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        self.threads = threads
        files = ([model_file] if isinstance(model_file, (str, os.PathLike))
                 else list(model_file))
        if not files:
            raise ValueError("NNPCalculator needs at least one model file")
        torch_dtype = {"float64": torch.float64, "float32": torch.float32}.get(str(dtype))
        if torch_dtype is None:
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        self.model_files = [os.fspath(f) for f in files]
        self.models = [load_model(f, device, torch_dtype) for f in files]

    @property
    def committee(self) -> bool:
        return len(self.models) > 1

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        want_forces = "forces" in properties
        if want_forces and not all(m.has_forces for m in self.models):
            raise PropertyNotImplementedError("a model of this calculator predicts no forces "
                                              "(its layer stack has no Force layer)")
        structure = Structure.from_ase(self.atoms)
        energies, forces = [], []
        previous = torch.get_num_threads()
        if previous != self.threads:
            torch.set_num_threads(self.threads)
        try:
            for model in self.models:
                e, f = model(structure, want_forces)
                energies.append(e)
                if want_forces:
                    forces.append(np.asarray(f, dtype=np.float64))
        finally:
            if previous != self.threads:
                torch.set_num_threads(previous)
        self.results.update(committee_results(energies, forces if want_forces else None,
                                              self.committee))
