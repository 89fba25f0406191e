"""Predictions of saved model files on the structures of a training database.

Any model file nnpflow writes is accepted:

* ANN potentials (:class:`~nnpflow.training.potential.TorchANNPotential`, schema
  ``nnpflow.ann_potential``) predict through ``predict_dataset``, which reuses the
  database's persisted features and force derivatives (the database must carry
  the model's descriptor; another one raises ``DescriptorMismatchError``);
* layer-stack models such as SchNet (schema ``nnpflow.layer_stack``) predict
  through :func:`nnpflow.models.prediction.predict_structures` on the database's
  structures (forces when the model has a ``Force`` layer).

Every prediction is a :class:`~nnpflow.training.potential.PredictionResult`
(energies eV, forces eV/Å, with the database's reference labels).  A committee's
prediction is the members' mean with their spread (:func:`committee_mean`).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from ..errors import SchemaError
from ..training.potential import PredictionResult

__all__ = ["ANN", "LAYER_STACK", "model_kind", "predict_model", "committee_mean"]

#: model kinds by file schema
ANN = "ann"
LAYER_STACK = "layer_stack"


def model_kind(path: str | os.PathLike) -> str:
    """``"ann"`` or ``"layer_stack"``: the kind of nnpflow model file ``path`` holds
    (read with ``weights_only=True``); another file raises ``SchemaError``."""
    from ..models.model_file import MODEL_SCHEMA
    from ..training.potential import ANN_SCHEMA
    path = os.fspath(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
        raise SchemaError(f"{path}: not a readable nnpflow model file "
                          f"({type(exc).__name__})") from None
    schema = payload.get("schema") if isinstance(payload, dict) else None
    if schema == ANN_SCHEMA:
        return ANN
    if schema == MODEL_SCHEMA:
        return LAYER_STACK
    raise SchemaError(f"{path}: holds {schema!r}, not an nnpflow model "
                      f"({ANN_SCHEMA} or {MODEL_SCHEMA})")


def _empty_result() -> PredictionResult:
    return PredictionResult(energies=np.zeros(0), forces=[], n_atoms=np.zeros(0, np.int64),
                            names=[], species=[], reference_energies=np.zeros(0),
                            reference_forces=[])


def _predict_ann(path, database, indices, batch_size, show_progress) -> PredictionResult:
    from torch.utils.data import Subset

    from ..datasets import HDF5StructureDataset
    from ..training.potential import TorchANNPotential
    potential = TorchANNPotential.from_file(path)
    dataset = HDF5StructureDataset(None, database, mode="load", dtype=potential.dtype)
    try:
        return potential.predict_dataset(Subset(dataset, [int(i) for i in indices]),
                                         eval_forces=True, batch_size=batch_size,
                                         show_progress=show_progress)
    finally:
        dataset.close()


def _predict_layer_stack(path, database, indices, batch_size) -> PredictionResult:
    from ..database import DatabaseReader
    from ..models.model_file import load_layer_stack
    from ..models.prediction import predict_structures
    model, _ = load_layer_stack(path)
    with DatabaseReader(database) as reader:
        structures = reader.structures([int(i) for i in indices])
    out = predict_structures(model, structures, batch_size=batch_size)
    forces = out.get("forces")
    return PredictionResult(
        energies=np.asarray(out["energies"], dtype=np.float64),
        forces=None if forces is None else [np.asarray(f, dtype=np.float64) for f in forces],
        n_atoms=np.array([s.n_atoms for s in structures], dtype=np.int64),
        names=[s.name for s in structures], species=[list(s.species) for s in structures],
        reference_energies=np.array([np.nan if s.energy is None else s.energy
                                     for s in structures], dtype=np.float64),
        reference_forces=[None if s.forces is None else np.asarray(s.forces, dtype=np.float64)
                          for s in structures])


def predict_model(path: str | os.PathLike, database: str | os.PathLike,
                  indices: Sequence[int] | np.ndarray, *, batch_size: int = 64,
                  show_progress: bool = False) -> PredictionResult:
    """Predict the structures ``indices`` (positions in the database) with the
    model file ``path``.

    Returns a :class:`PredictionResult` in the order of ``indices``: ``energies``
    (S,) eV, ``forces`` one (N_s, 3) array per structure in eV/Å (``None`` for a
    layer-stack model without a ``Force`` layer), ``n_atoms``, ``names`` (source
    labels), ``species`` and the database's ``reference_energies`` (NaN where a
    structure has none) and ``reference_forces`` (``None`` entries where it has none).
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0:
        return _empty_result()
    kind = model_kind(path)
    if kind == ANN:
        return _predict_ann(path, database, indices, batch_size, show_progress)
    return _predict_layer_stack(path, database, indices, batch_size)


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
        if r.names != first.names or not np.array_equal(r.n_atoms, first.n_atoms):
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
