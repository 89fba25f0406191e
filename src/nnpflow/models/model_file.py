"""Saving and loading layer-stack models as single files.

A model file is a ``torch.save``'d dict of plain tensors and JSON-compatible
values, so ``torch.load(path, weights_only=True)`` reads it without running
pickled code::

    {"schema": "nnpflow.layer_stack", "schema_version": 1,
     "config": {"architecture", "build_params", "layers"},
     "dtype": "float32", "state_dict": {name: Tensor}, "metadata": {...}}

:func:`read_torch_file` is the checked loader shared with training checkpoints:
a file of another schema, or of a newer schema version than this code knows,
raises :class:`~nnpflow.errors.SchemaError` naming the file.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from ..errors import SchemaError
from ..safe_write import atomic_path
from .stack import LayerStack

MODEL_SCHEMA = "nnpflow.layer_stack"
MODEL_SCHEMA_VERSION = 1

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` or ``"float64"``."""
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported model dtype {dtype}")


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r}; use float32 or float64") from None


def save_torch_file(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """``torch.save`` to ``path`` atomically (temporary file next to it, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(dict(payload), tmp)


def read_torch_file(path: str | os.PathLike, schema: str, max_version: int,
                    map_location: str | torch.device = "cpu") -> dict:
    """Load a file written by :func:`save_torch_file` with ``weights_only=True``
    and check its ``schema`` and ``schema_version``."""
    path = os.fspath(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # corrupt file, or an object weights_only refuses
        raise SchemaError(f"{path}: not a readable nnpflow file ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return check_payload(path, payload, schema, max_version)


def check_payload(path: str, payload: Any, schema: str, max_version: int) -> dict:
    """``payload`` when it is a dict of ``schema`` with a ``schema_version`` this
    code reads (at most ``max_version``); else ``SchemaError`` naming ``path``."""
    if not isinstance(payload, dict) or "schema" not in payload:
        raise SchemaError(f"{path}: not an nnpflow file (no 'schema' entry)")
    if payload["schema"] != schema:
        raise SchemaError(f"{path}: holds {payload['schema']!r}, expected {schema!r}")
    version = payload.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise SchemaError(f"{path}: invalid schema_version {version!r}")
    if version > max_version:
        raise SchemaError(f"{path}: {schema} schema version {version} is newer than this "
                          f"nnpflow understands ({max_version}); upgrade nnpflow")
    return payload


def model_payload(model: LayerStack, metadata: Mapping[str, Any] | None = None) -> dict:
    """The model-file dict of ``model`` (weights copied to CPU)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return {"schema": MODEL_SCHEMA, "schema_version": MODEL_SCHEMA_VERSION,
            "config": model.config(), "dtype": dtype_name(dtype),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "metadata": dict(metadata or {})}


def save_layer_stack(path: str | os.PathLike, model: LayerStack,
                     metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``model`` (architecture, build params, layers, weights) to ``path``."""
    save_torch_file(path, model_payload(model, metadata))


def model_from_payload(payload: Mapping[str, Any],
                       device: str | torch.device = "cpu") -> LayerStack:
    """Rebuild a :class:`LayerStack` from a model-file dict (its weights' names,
    shapes and finiteness checked first, :mod:`nnpflow.models.model_checks`)."""
    from .model_checks import check_state_dict, expected_shapes
    check_state_dict(payload.get("state_dict"),
                     expected_shapes(lambda: LayerStack.from_config(payload["config"])))
    model = LayerStack.from_config(payload["config"])
    model.to(dtype=dtype_from_name(payload.get("dtype", "float32")))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


def load_layer_stack(path: str | os.PathLike, device: str | torch.device = "cpu"
                     ) -> tuple[LayerStack, dict]:
    """Load a model file: ``(model in eval mode, metadata)``."""
    payload = read_torch_file(path, MODEL_SCHEMA, MODEL_SCHEMA_VERSION)
    try:
        return model_from_payload(payload, device), dict(payload.get("metadata", {}))
    except SchemaError as exc:
        raise SchemaError(f"{os.fspath(path)}: {exc}") from None
