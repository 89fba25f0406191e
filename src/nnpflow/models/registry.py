"""Every model family nnpflow knows, and the one writer and loader of model files.

A family is a module with

* ``KIND``: its name, the model file's ``family`` entry (``"ann"``);
* ``VERSION``: the newest version of its ``settings`` layout it reads and writes
  (the file's ``family_version``);
* ``MODEL_TYPE``: the ``nn.Module`` class of its models;
* ``envelope(model, metadata=None, history=(), training=None) -> dict``: the
  model file's dict (:func:`nnpflow.models.model_file.model_envelope`);
* ``load_payload(envelope, device) -> nn.Module``, ``has_forces(model)``,
  ``predict_structures(model, structures, eval_forces, batch_size,
  show_progress)`` and ``predict_database(model, database, indices,
  batch_size, show_progress)`` (both returning a
  :class:`~nnpflow.models.prediction_result.PredictionResult`).

A new family is one such module in ``models/`` and one line in :data:`FAMILIES`.
Every family writes the one envelope (:mod:`nnpflow.models.model_file`);
``model_file.LEGACY_SCHEMAS`` names the two schemas written before it, whose
files the family's ``upgrade(payload) -> envelope`` reads.

:func:`save_model` writes any family's model; :func:`load_model` reads any
model file (``torch.load(weights_only=True)``, schema, family and versions
checked, weights checked before allocation) into a :class:`LoadedModel` with
the same prediction methods for every family.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import SchemaError
from .model_file import LEGACY_SCHEMAS, check_family, read_model_payload, save_torch_file
from .prediction_result import PredictionResult

#: family name (the model file's ``family``) -> the module of the family
FAMILIES: dict[str, str] = {
    "ann": "nnpflow.models.ann_model",
    "layer_stack": "nnpflow.models.stack_family",
}

__all__ = ["FAMILIES", "LEGACY_SCHEMAS", "LoadedModel", "family", "family_of", "load_model",
           "model_kind", "read_model_file", "save_model"]


def family(kind: str) -> ModuleType:
    """The family module of the family name ``kind``."""
    try:
        return importlib.import_module(FAMILIES[kind])
    except KeyError:
        raise SchemaError(f"{kind!r} is not a model family this nnpflow knows "
                          f"({', '.join(map(repr, FAMILIES))}); upgrade nnpflow") from None


def family_of(model: torch.nn.Module) -> ModuleType:
    """The family module whose ``MODEL_TYPE`` ``model`` is."""
    for kind in FAMILIES:
        fam = family(kind)
        if isinstance(model, fam.MODEL_TYPE):
            return fam
    raise TypeError(f"{type(model).__name__} is not a model of a registered family "
                    f"({', '.join(FAMILIES)})")


def save_model(path: str | os.PathLike, model: torch.nn.Module, *,
               metadata: Mapping[str, Any] | None = None, history: Sequence[Mapping] = (),
               training: Mapping[str, Any] | None = None) -> None:
    """Write ``model`` (of any family) as a model file (the envelope of
    :mod:`nnpflow.models.model_file`), atomically."""
    fam = family_of(model)
    save_torch_file(path, fam.envelope(model, metadata=metadata, history=history,
                                       training=training))


def _upgrade(kind: str, payload: dict) -> dict:
    return family(kind).upgrade(payload)


def read_model_file(path: str | os.PathLike, kind: str | None = None
                    ) -> tuple[ModuleType, dict]:
    """``(family module, envelope)`` of a model file (files of the schemas before
    the envelope upgraded in memory), its schema, family and versions checked;
    with ``kind``, a model of another family raises ``SchemaError`` too."""
    payload = read_model_payload(path, _upgrade)
    name = payload.get("family")
    if not isinstance(name, str) or name not in FAMILIES:
        raise SchemaError(f"{os.fspath(path)}: holds a model of family {name!r}, which this "
                          f"nnpflow does not know ({', '.join(map(repr, FAMILIES))}); "
                          "upgrade nnpflow")
    fam = family(name)
    check_family(path, payload, kind or name, fam.VERSION)
    return fam, payload


def model_kind(path: str | os.PathLike) -> str:
    """The family (``"ann"``, ``"layer_stack"``) of the model file ``path``;
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
