"""The layer-stack family (SchNet and other Enerzyme-style stacks) in the model registry.

A :class:`~nnpflow.models.stack.LayerStack` is an ``nn.Module`` whose forward
takes named fields (``N``, ``Ra``, ``Za``, pair lists, ...) and returns named
fields (``E``, and ``Fa``, ``Qa``, ``M2`` where its layers make them).  Its model
file is the envelope (:mod:`nnpflow.models.model_file`) with ``family:
"layer_stack"`` and ``settings`` = :meth:`LayerStack.config` (``architecture``,
``build_params``, ``layers``); files of the schema ``nnpflow.layer_stack`` v1
(written before the envelope, ``config`` in place of ``settings``) are read too.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .model_file import (LAYER_STACK, LAYER_STACK_VERSION, MODEL_SCHEMA, MODEL_SCHEMA_VERSION,
                         model_from_payload, model_payload, upgrade_layer_stack)
from .prediction_result import PredictionResult, empty_result, result_for_structures
from .stack import LayerStack

#: the schema this family's files are written in
SCHEMA = MODEL_SCHEMA
SCHEMA_VERSION = MODEL_SCHEMA_VERSION
KIND = LAYER_STACK
VERSION = LAYER_STACK_VERSION
MODEL_TYPE = LayerStack
#: ``nnpflow.layer_stack`` v1 dict -> envelope
upgrade = upgrade_layer_stack


def envelope(model: LayerStack, metadata: Mapping[str, Any] | None = None,
             history: Sequence[Mapping] = (), training: Mapping[str, Any] | None = None
             ) -> dict:
    """The model-file dict of ``model``."""
    return model_payload(model, metadata, history=history, training=training)


def load_payload(payload: Mapping[str, Any], device: str | torch.device = "cpu") -> LayerStack:
    """The model (eval mode) of a checked model-file dict of this family."""
    return model_from_payload(payload, device)


def has_forces(model: LayerStack) -> bool:
    """Whether the stack predicts forces (it has a ``Force`` layer)."""
    return "Fa" in model.outputs


#: PredictionResult.extra key -> key of :func:`nnpflow.models.prediction.predict_structures`
EXTRA_OUTPUTS = {"Qa": "charges", "Q": "total_charge_raw", "M2": "dipoles"}


def predict_structures(model: LayerStack, structures: Sequence, eval_forces: bool = True,
                       batch_size: int = 32, show_progress: bool = False) -> PredictionResult:
    """Energies (eV) and, with a ``Force`` layer, forces (eV/Å) of structures.

    The other targets the stack predicts go to ``extra``: ``"Qa"`` (one (N_s,)
    array of atomic charges per structure, e), ``"Q"`` ((S,) sum of the uncorrected
    atomic charges, e) and ``"M2"`` ((S, 3) dipole moments, e·Å)."""
    from .prediction import predict_structures as run
    structures = list(structures)
    if not structures:
        return empty_result()
    out = run(model, structures, batch_size=batch_size)
    forces = out.get("forces") if eval_forces else None
    result = result_for_structures(structures, out["energies"], forces)
    result.extra.update({name: out[key] for name, key in EXTRA_OUTPUTS.items() if key in out})
    return result


def predict_database(model: LayerStack, database: str | os.PathLike, indices: np.ndarray,
                     batch_size: int = 64, show_progress: bool = False) -> PredictionResult:
    """Predictions for the structures ``indices`` of a database."""
    from ..database import DatabaseReader
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    if not indices:
        return empty_result()
    with DatabaseReader(database) as reader:
        structures = reader.structures(indices)
    return predict_structures(model, structures, True, batch_size, show_progress)
