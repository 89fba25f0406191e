"""The model file: one versioned, weights-only envelope for every model family.

A model file is a ``torch.save``'d dict of plain tensors and JSON-compatible
values, so ``torch.load(path, weights_only=True)`` reads it without running
pickled code.  Every family writes the same envelope (schema ``nnpflow.model``,
version 2) with its own content in ``settings``::

    {"schema": "nnpflow.model", "schema_version": 2,
     "family": "ann" | "layer_stack" | ...,   # a key of models.registry.FAMILIES
     "family_version": 1,         # version of the family's settings layout
     "created_by": "nnpflow <version>",
     "settings": {...},           # the family's JSON-compatible settings (its docstring)
     "dtype": "float32" | "float64",
     "state_dict": {name: Tensor},
     "metadata": {...},           # the writer's notes (epoch, val_score, name, ...)
     "history": [{epoch, ...}, ...],
     "training": {...}}           # how the model was trained (or imported)

:func:`model_envelope` builds it; :func:`nnpflow.models.registry.save_model`
writes any family's model and :func:`nnpflow.models.registry.read_model_file` /
:func:`~nnpflow.models.registry.load_model` read any model file: the envelope,
and the two schemas written before it (``nnpflow.ann_potential`` v1 and
``nnpflow.layer_stack`` v1, upgraded in memory by their family's ``upgrade``;
such an envelope also says ``upgraded_from``, e.g. ``"nnpflow.ann_potential v1"``).

:func:`read_torch_file` is the checked loader shared with training checkpoints:
a file of another schema, or of a newer schema version than this code knows,
raises :class:`~nnpflow.errors.SchemaError` naming the file.

The layer-stack family's own part (:func:`model_payload`,
:func:`save_layer_stack`, :func:`load_layer_stack`) lives here too; its
``settings`` are :meth:`LayerStack.config` (``architecture``, ``build_params``,
``layers``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import torch

from ..errors import SchemaError
from ..safe_write import atomic_path
from .stack import LayerStack

#: the model-file envelope every family writes, and its newest version
MODEL_SCHEMA = "nnpflow.model"
MODEL_SCHEMA_VERSION = 2
#: the layer-stack family: its name in the envelope, the version of its settings
#: layout, and the schema of its files before the envelope
LAYER_STACK = "layer_stack"
LAYER_STACK_VERSION = 1
LAYER_STACK_LEGACY_SCHEMA = "nnpflow.layer_stack"
LAYER_STACK_LEGACY_VERSION = 1
#: schemas of the model files written before the envelope -> (family, newest version);
#: read (upgraded in memory by the family's ``upgrade``), never written
LEGACY_SCHEMAS: dict[str, tuple[str, int]] = {
    "nnpflow.ann_potential": ("ann", 1),
    LAYER_STACK_LEGACY_SCHEMA: (LAYER_STACK, LAYER_STACK_LEGACY_VERSION),
}

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


def read_model_payload(path: str | os.PathLike,
                       upgrade: Callable[[str, dict], dict]) -> dict:
    """The envelope of the model file ``path``: an ``nnpflow.model`` file as stored
    (version checked), or a file of one of the :data:`LEGACY_SCHEMAS` (version
    checked) upgraded in memory by ``upgrade(family, payload)``.  Anything else
    raises ``SchemaError`` naming ``path``."""
    path = os.fspath(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise SchemaError(f"{path}: not a readable nnpflow model file "
                          f"({type(exc).__name__})") from None
    schema = payload.get("schema") if isinstance(payload, dict) else None
    if schema == MODEL_SCHEMA:
        return check_payload(path, payload, MODEL_SCHEMA, MODEL_SCHEMA_VERSION)
    if schema not in LEGACY_SCHEMAS:
        known = " or ".join(map(repr, [MODEL_SCHEMA, *LEGACY_SCHEMAS]))
        raise SchemaError(f"{path}: holds {schema!r}, not an nnpflow model ({known})")
    family, max_version = LEGACY_SCHEMAS[schema]
    try:
        return upgrade(family, check_payload(path, payload, schema, max_version))
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None


def check_family(path: str | os.PathLike, payload: Mapping[str, Any], family: str,
                 max_version: int) -> None:
    """The envelope ``payload`` holds a model of ``family`` whose ``family_version``
    this code reads (at most ``max_version``); else ``SchemaError`` naming ``path``."""
    if payload.get("family") != family:
        raise SchemaError(f"{os.fspath(path)}: holds a model of family "
                          f"{payload.get('family')!r}, expected {family!r}")
    version = payload.get("family_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SchemaError(f"{os.fspath(path)}: invalid family_version {version!r}")
    if version > max_version:
        raise SchemaError(f"{os.fspath(path)}: {family} model version {version} is newer than "
                          f"this nnpflow understands ({max_version}); upgrade nnpflow")


def model_envelope(family: str, family_version: int, settings: Mapping[str, Any],
                   state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype, *,
                   metadata: Mapping[str, Any] | None = None, history: Any = (),
                   training: Mapping[str, Any] | None = None) -> dict:
    """The model-file dict (see the module docstring); weights copied to the CPU."""
    from .. import __version__
    return {"schema": MODEL_SCHEMA, "schema_version": MODEL_SCHEMA_VERSION,
            "family": str(family), "family_version": int(family_version),
            "created_by": f"nnpflow {__version__}",
            "settings": dict(settings), "dtype": dtype_name(dtype),
            "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
            "metadata": dict(metadata or {}), "history": [dict(r) for r in history],
            "training": dict(training or {})}


def legacy_envelope(payload: Mapping[str, Any], family: str, settings: Mapping[str, Any],
                    default_dtype: str) -> dict:
    """The envelope of a model file written before it (schema ``payload["schema"]``
    v1): the same weights, ``settings`` as given, the rest carried over."""
    return {"schema": MODEL_SCHEMA, "schema_version": MODEL_SCHEMA_VERSION,
            "family": family, "family_version": 1,
            "created_by": str((payload.get("metadata") or {}).get("created_by", "")),
            "upgraded_from": f"{payload.get('schema')} v{payload.get('schema_version')}",
            "settings": dict(settings), "dtype": payload.get("dtype", default_dtype),
            "state_dict": payload.get("state_dict"),
            "metadata": dict(payload.get("metadata") or {}),
            "history": list(payload.get("history") or []),
            "training": dict(payload.get("training") or {})}


def model_payload(model: LayerStack, metadata: Mapping[str, Any] | None = None, *,
                  history: Any = (), training: Mapping[str, Any] | None = None) -> dict:
    """The model-file dict of a layer stack (weights copied to CPU)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return model_envelope(LAYER_STACK, LAYER_STACK_VERSION, model.config(), model.state_dict(),
                          dtype, metadata=metadata, history=history, training=training)


def upgrade_layer_stack(payload: Mapping[str, Any]) -> dict:
    """The envelope of a ``nnpflow.layer_stack`` v1 file's dict (its ``config`` is
    the settings)."""
    config = payload.get("config")
    if not isinstance(config, Mapping):
        raise SchemaError("no layer-stack settings ('config')")
    return legacy_envelope(payload, LAYER_STACK, config, "float32")


def save_layer_stack(path: str | os.PathLike, model: LayerStack,
                     metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``model`` (architecture, build params, layers, weights) to ``path``."""
    save_torch_file(path, model_payload(model, metadata))


def model_from_payload(payload: Mapping[str, Any],
                       device: str | torch.device = "cpu") -> LayerStack:
    """Rebuild a :class:`LayerStack` from a model-file dict (its weights' names,
    shapes and finiteness checked first, :mod:`nnpflow.models.model_checks`)."""
    from .model_checks import check_state_dict, expected_shapes
    if payload.get("schema") == LAYER_STACK_LEGACY_SCHEMA:
        payload = upgrade_layer_stack(payload)
    config = payload.get("settings")
    if not isinstance(config, Mapping):
        raise SchemaError("no layer-stack settings ('settings')")
    check_state_dict(payload.get("state_dict"),
                     expected_shapes(lambda: LayerStack.from_config(config)))
    model = LayerStack.from_config(config)
    model.to(dtype=dtype_from_name(payload.get("dtype", "float32")))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


def load_layer_stack(path: str | os.PathLike, device: str | torch.device = "cpu"
                     ) -> tuple[LayerStack, dict]:
    """Load a layer-stack model file (the envelope or ``nnpflow.layer_stack`` v1):
    ``(model in eval mode, metadata)``."""
    def upgrade(family: str, old: dict) -> dict:   # another family's file: only its name
        return upgrade_layer_stack(old) if family == LAYER_STACK else {"family": family}
    payload = read_model_payload(path, upgrade)
    check_family(path, payload, LAYER_STACK, LAYER_STACK_VERSION)
    try:
        return model_from_payload(payload, device), dict(payload.get("metadata", {}))
    except SchemaError as exc:
        raise SchemaError(f"{os.fspath(path)}: {exc}") from None
