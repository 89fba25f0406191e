"""Activation functions of layer-stack cores, by name (Enerzyme's ``activation_fn``
and ``activation_params``).

Two scaled, tempered functions of a feature ``x`` (dimensionless), each with a
scale ``α`` and a temperature ``β``:

``shifted_softplus``   f(x) = α/β · (softplus(βx) - log 2)   (α x / 2 at β = 0)
``swish``              f(x) = α x · sigmoid(βx)

Both are 0 at x = 0; as β → ∞ both tend to max(0, αx).  ``activation_params``
(all optional):

``initial_alpha``  initial α (default 1)
``initial_beta``   initial β (default 1 for shifted_softplus, 1.702 for swish,
                   which makes swish start close to the GELU)
``learnable``      α and β are trained with the weights (default false for
                   shifted_softplus, true for swish)
``dim_feature``    1 (the only value nnpflow takes): one α and one β per
                   activation, broadcast over the features

These are Enerzyme's names, definitions and defaults
(``enerzyme.models.activation``).  With α = β = 1 and ``learnable: false`` a
function has no parameters and is evaluated in its plain form
(``softplus(x) - log 2``, ``x·sigmoid(x)``); saved models of such cores hold no
extra weights.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import ConfigError

__all__ = ["ACTIVATION_DEFAULTS", "ScaledActivation", "ShiftedSoftplus", "Swish",
           "activation_module", "check_activation"]

_LOG2 = math.log(2.0)

#: name -> default activation_params
ACTIVATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "shifted_softplus": {"dim_feature": 1, "initial_alpha": 1.0, "initial_beta": 1.0,
                         "learnable": False},
    "swish": {"dim_feature": 1, "initial_alpha": 1.0, "initial_beta": 1.702, "learnable": True},
}


class ScaledActivation(nn.Module):
    """Base of the α/β activations: parameters ``alpha`` and ``beta`` (shape (1,))
    unless α = β = 1 and not learnable (then no parameters: the plain form)."""

    def __init__(self, initial_alpha: float, initial_beta: float, learnable: bool):
        super().__init__()
        self.plain = float(initial_alpha) == 1.0 and float(initial_beta) == 1.0 and not learnable
        if not self.plain:
            dtype = torch.get_default_dtype()
            self.alpha = nn.Parameter(torch.full((1,), float(initial_alpha), dtype=dtype),
                                      requires_grad=bool(learnable))
            self.beta = nn.Parameter(torch.full((1,), float(initial_beta), dtype=dtype),
                                     requires_grad=bool(learnable))


class ShiftedSoftplus(ScaledActivation):
    """``α/β (softplus(βx) - log 2)``; ``α x / 2`` where β = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain:
            return F.softplus(x) - _LOG2
        beta = self.beta
        nonzero = beta != 0
        safe_beta = torch.where(nonzero, beta, torch.ones_like(beta))
        tempered = (F.softplus(safe_beta * x) - _LOG2) / safe_beta
        return self.alpha * torch.where(nonzero, tempered, 0.5 * x)


class Swish(ScaledActivation):
    """``α x sigmoid(βx)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain:
            return F.silu(x)
        return self.alpha * x * torch.sigmoid(self.beta * x)


_CLASSES = {"shifted_softplus": ShiftedSoftplus, "swish": Swish}


def check_activation(name: Any, params: Mapping | None, where: str) -> dict[str, Any]:
    """The full ``activation_params`` of activation ``name`` (defaults filled in);
    ``ConfigError`` naming ``where`` for an unknown name, key or value."""
    where = f"{where}." if where else ""
    if not isinstance(name, str) or name not in ACTIVATION_DEFAULTS:
        raise ConfigError(f"{where}activation_fn: unknown activation {name!r}; choose one of "
                          f"{', '.join(ACTIVATION_DEFAULTS)}")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}activation_params: expected a mapping with "
                          f"{', '.join(ACTIVATION_DEFAULTS[name])}, got {params!r}")
    out = dict(ACTIVATION_DEFAULTS[name])
    for key, value in params.items():
        if key not in out:
            raise ConfigError(f"{where}activation_params.{key}: unknown key; allowed: "
                              f"{', '.join(out)}")
        out[key] = value
    for key in ("initial_alpha", "initial_beta"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ConfigError(f"{where}activation_params.{key}: expected a finite number, "
                              f"got {value!r}")
        out[key] = float(value)
    if not isinstance(out["learnable"], bool):
        raise ConfigError(f"{where}activation_params.learnable: expected true or false, "
                          f"got {out['learnable']!r}")
    if out["dim_feature"] != 1 or isinstance(out["dim_feature"], bool):
        raise ConfigError(f"{where}activation_params.dim_feature: nnpflow takes 1 (one α and "
                          f"β per activation, broadcast over features), got "
                          f"{out['dim_feature']!r}")
    return out


def activation_module(name: str, params: Mapping | None = None,
                      where: str = "") -> ScaledActivation:
    """A fresh activation module (see the module docstring)."""
    p = check_activation(name, params, where)
    return _CLASSES[name](p["initial_alpha"], p["initial_beta"], p["learnable"])
