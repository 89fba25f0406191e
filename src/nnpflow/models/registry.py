"""Every model family nnpflow knows, and the one loader of model files.

A family is a module with ``SCHEMA`` (the model file's ``schema`` entry),
``SCHEMA_VERSION`` (the newest version it reads), ``KIND`` (a short name) and
the functions ``load_payload(payload, device) -> nn.Module``,
``has_forces(model)``, ``predict_structures(model, structures, eval_forces,
batch_size, show_progress)`` and ``predict_database(model, database, indices,
batch_size, show_progress)`` (both returning a
:class:`~nnpflow.models.prediction_result.PredictionResult`).  A new family is
one such module and one line in :data:`FAMILIES`.

:func:`load_model` reads any model file (``torch.load(weights_only=True)``,
schema and version checked, weights checked before allocation) into a
:class:`LoadedModel` with the same prediction methods for every family.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import SchemaError
from .model_file import check_payload
from .prediction_result import PredictionResult

#: model-file schema -> the module of its family
FAMILIES: dict[str, str] = {
    "nnpflow.ann_potential": "nnpflow.models.ann_model",
    "nnpflow.layer_stack": "nnpflow.models.stack_family",
}

__all__ = ["FAMILIES", "LoadedModel", "family", "load_model", "model_kind", "read_model_file"]


def family(schema: str) -> ModuleType:
    """The family module of a model-file ``schema``."""
    try:
        return importlib.import_module(FAMILIES[schema])
    except KeyError:
        raise SchemaError(f"{schema!r} is not an nnpflow model schema "
                          f"({' or '.join(map(repr, FAMILIES))})") from None


def read_model_file(path: str | os.PathLike) -> tuple[ModuleType, dict]:
    """``(family module, payload)`` of a model file, its schema and version checked."""
    path = os.fspath(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise SchemaError(f"{path}: not a readable nnpflow model file "
                          f"({type(exc).__name__})") from None
    schema = payload.get("schema") if isinstance(payload, dict) else None
    if schema not in FAMILIES:
        raise SchemaError(f"{path}: holds {schema!r}, not an nnpflow model "
                          f"({' or '.join(map(repr, FAMILIES))})")
    fam = family(schema)
    return fam, check_payload(path, payload, schema, fam.SCHEMA_VERSION)


def model_kind(path: str | os.PathLike) -> str:
    """The ``KIND`` (``"ann"``, ``"layer_stack"``) of the model file ``path``;
    another file raises ``SchemaError``."""
    return read_model_file(path)[0].KIND


@dataclass
class LoadedModel:
    """A model of any family with the family's prediction functions."""

    family: ModuleType
    module: torch.nn.Module
    path: str = ""
    payload: dict = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return self.family.KIND

    @property
    def has_forces(self) -> bool:
        return bool(self.family.has_forces(self.module))

    @property
    def metadata(self) -> dict:
        return dict(self.payload.get("metadata") or {})

    def predict(self, structures: Sequence, eval_forces: bool = True, batch_size: int = 32,
                show_progress: bool = False) -> PredictionResult:
        """Energies (eV) and forces (eV/Å) of ``nnpflow.Structure``s."""
        return self.family.predict_structures(self.module, list(structures), eval_forces,
                                              batch_size, show_progress)

    def predict_database(self, database: str | os.PathLike, indices: Any,
                         batch_size: int = 64, show_progress: bool = False) -> PredictionResult:
        """Predictions for the structures ``indices`` (positions) of a database."""
        return self.family.predict_database(self.module, database,
                                            np.asarray(indices, dtype=np.int64).reshape(-1),
                                            batch_size, show_progress)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> LoadedModel:
    """The model of an nnpflow model file of any family (in eval mode; in ``dtype``
    when given, else the file's)."""
    fam, payload = read_model_file(path)
    try:
        module = fam.load_payload(payload, device)
    except SchemaError as exc:
        raise SchemaError(f"{os.fspath(path)}: {exc}") from None
    if dtype is not None:
        module = module.to(dtype=dtype)
    return LoadedModel(fam, module.eval(), os.fspath(path), payload)
