"""Checks of a model file's contents before a model is built from it.

A model file is data: an edited or damaged file must not turn into a model that
predicts something else without a word, nor into a request for memory it never
needed.  Before any network is allocated:

* the parameter shapes the file's architecture implies are computed on torch's
  ``meta`` device (no memory) and compared with the stored tensors, name by name;
* every stored floating-point tensor must be finite (no NaN or ±inf weight);
* ANN potentials: the stored descriptor fingerprint (``descriptor_sha256``) must be
  the fingerprint of the stored descriptor settings (an edited ``rad_cutoff`` gives
  other features, hence other energies), the per-species feature standard
  deviations must be positive and the energy normalisation and atomic reference
  energies finite (scale > 0).

Every failure raises :class:`~nnpflow.errors.SchemaError`; the loaders
(:func:`nnpflow.models.registry.load_model`, ``TorchANNPotential.from_file``,
:func:`nnpflow.models.model_file.load_layer_stack`) put the file's path in front of the message.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, Mapping

import torch

from ..errors import SchemaError
from ..safe_write import canonical_json


#: tensors above this many elements are made on the ``meta`` device while a model is
#: built only to learn its shapes (smaller ones are real, for layers that compute
#: constants from them, e.g. radial basis centres)
SHAPE_PROBE_ELEMENTS = 1 << 16

_FACTORIES = (torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn,
              torch.randint, torch.arange, torch.linspace, torch.logspace, torch.eye,
              torch.empty_strided)


class _LargeTensorsOnMeta(torch.overrides.TorchFunctionMode):
    """Tensor factories give ``meta`` tensors (shape, no memory) above
    :data:`SHAPE_PROBE_ELEMENTS` elements, ordinary ones below."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            rest = {k: v for k, v in kwargs.items() if k != "device"}
            probe = func(*args, **rest, device="meta")
            if isinstance(probe, torch.Tensor) and probe.numel() > SHAPE_PROBE_ELEMENTS:
                return probe
        return func(*args, **kwargs)


def expected_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the state dict of the module ``build()`` makes, where every
    large tensor is made on the ``meta`` device: an absurd width in a damaged file
    costs no memory here, and is then refused by :func:`check_state_dict`."""
    with _LargeTensorsOnMeta():
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_finite(state: Mapping[str, Any], what: str = "weights") -> None:
    """Every floating-point tensor of ``state`` is finite."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                raise SchemaError(f"{int(bad.sum())} non-finite value(s) (NaN or inf) in the "
                                  f"{what} {name!r}; the file is damaged")


def check_state_dict(state: Any, expected: Mapping[str, tuple[int, ...]]) -> None:
    """The stored weights ``state`` have exactly the names and shapes ``expected``
    (from :func:`expected_shapes`) and are finite."""
    if not isinstance(state, Mapping):
        raise SchemaError(f"'state_dict' is a {type(state).__name__}, not a mapping of tensors")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SchemaError("the stored weights do not fit the stored architecture: "
                          + "; ".join(part for part in (
                              f"missing {', '.join(missing)}" if missing else "",
                              f"unexpected {', '.join(unexpected)}" if unexpected else "")
                              if part))
    for name, shape in expected.items():
        value = state[name]
        if not isinstance(value, torch.Tensor):
            raise SchemaError(f"weight {name!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(shape):
            raise SchemaError(f"weight {name!r} has shape {tuple(value.shape)}, but the stored "
                              f"architecture needs {tuple(shape)}")
    check_finite(state)


def check_descriptor_fingerprint(settings: Mapping[str, Any]) -> None:
    """The stored ``descriptor_sha256`` is the fingerprint of the stored descriptor
    settings (``settings``: an ANN model file's ``settings``)."""
    stored = settings.get("descriptor_sha256")
    settings = settings.get("descriptor")
    if not isinstance(settings, Mapping):
        raise SchemaError("no descriptor settings ('descriptor')")
    if not isinstance(stored, str):
        raise SchemaError("no descriptor fingerprint ('descriptor_sha256')")
    actual = hashlib.sha256(canonical_json(dict(settings)).encode()).hexdigest()
    if actual != stored:
        raise SchemaError(f"its descriptor settings {canonical_json(dict(settings))} do not "
                          f"match the descriptor fingerprint stored with them ({stored[:12]}…, "
                          f"the settings give {actual[:12]}…): the settings were edited after "
                          "training, and the model would compute other features than it was "
                          "trained on")


def check_ann_numbers(settings: Mapping[str, Any], state_dict: Mapping[str, Any],
                      species: list[str]) -> None:
    """Feature standard deviations > 0 (``state_dict``), finite energy normalisation
    (scale > 0) and finite atomic reference energies (an ANN model file's ``settings``)."""
    std = state_dict.get("feature_std")
    if isinstance(std, torch.Tensor) and bool((std <= 0).any()):
        rows = sorted({species[int(t)] for t in torch.nonzero(std <= 0)[:, 0].tolist()
                       if int(t) < len(species)})
        raise SchemaError(f"{int((std <= 0).sum())} feature standard deviation(s) <= 0 "
                          f"(species {', '.join(rows)}): the features would be divided by zero")
    norm = settings.get("normalization")
    if not isinstance(norm, Mapping):
        raise SchemaError("no energy normalisation ('normalization')")
    for key in ("energy_shift", "energy_scale"):
        value = norm.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(f"normalization.{key} is {value!r}, not a finite number")
    if norm["energy_scale"] <= 0:
        raise SchemaError(f"normalization.energy_scale is {norm['energy_scale']!r}; it must be "
                          "> 0")
    for s, value in dict(settings.get("atomic_energies") or {}).items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(f"atomic_energies.{s} is {value!r}, not a finite number (eV)")
