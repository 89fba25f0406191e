"""Activation functions of the atomic networks, by name.

Names and definitions (x is the node's input, dimensionless):

``linear``    x
``tanh``      tanh(x)
``sigmoid``   1 / (1 + exp(-x))
``mtanh``     1.7159 tanh(2x/3)                 (aenet's scaled tanh, f(±1) = ±1)
``twist``     1.7159 tanh(2x/3) + 0.1 x         (aenet's scaled tanh with a linear twist)
``relu``      max(0, x)          (piecewise linear: its forces are discontinuous)
``gelu``      x Φ(x) (exact, erf form)
``silu``      x sigmoid(x)  (also called swish)
``softplus``  log(1 + exp(x))

``mtanh`` and ``twist`` are the definitions of aenet's ``feedforward.f90``
(``ff_activate``, types 3 and 4, after LeCun et al., "Efficient BackProp").
Every function here is twice differentiable almost everywhere, which force
training needs (forces are first derivatives of the energy; their loss is
differentiated once more).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

#: aenet's scaled-tanh constants
MTANH_A = 1.7159
MTANH_B = 2.0 / 3.0
TWIST_C = 0.1


class ScaledTanh(nn.Module):
    """``a tanh(b x) + c x`` (aenet's ``mtanh`` with c = 0, ``twist`` with c = 0.1)."""

    def __init__(self, a: float = MTANH_A, b: float = MTANH_B, c: float = 0.0):
        super().__init__()
        self.a, self.b, self.c = float(a), float(b), float(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x * self.b) * self.a
        return y + x * self.c if self.c else y

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b:.6g}, c={self.c}"


_FACTORIES = {
    "linear": nn.Identity,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "mtanh": lambda: ScaledTanh(MTANH_A, MTANH_B, 0.0),
    "twist": lambda: ScaledTanh(MTANH_A, MTANH_B, TWIST_C),
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}

#: the activation names :func:`activation` accepts
ACTIVATIONS: tuple[str, ...] = tuple(_FACTORIES)


def activation(name: str) -> nn.Module:
    """A fresh module for activation ``name`` (see the module docstring)."""
    key = str(name).lower()
    if key not in _FACTORIES:
        raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return _FACTORIES[key]()
