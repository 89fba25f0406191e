"""Cutoff (switching) functions of a distance, by name (Enerzyme's ``cutoff_fn``).

Every function goes from 1 to 0 as the distance ``d`` goes from ``cuton`` to
``cutoff`` (both in the units of ``d``, Å in nnpflow): with
``x = (d - cuton) / (cutoff - cuton)`` it is 1 for ``x <= 0``, 0 for ``x >= 1`` and
in between

==============  =====================================================  ==========================
name            f(x) for 0 < x < 1                                     smooth at x = 1 up to
==============  =====================================================  ==========================
``cosine``      (cos(πx) + 1) / 2                                      1st derivative
``polynomial``  1 - 10x³ + 15x⁴ - 6x⁵                                  2nd derivative
``bump``        exp(-x² / (1 - x²))                                    every derivative
``smooth``      g(1 - x) / (g(x) + g(1 - x)),  g(t) = exp(-1/t)        every derivative
==============  =====================================================  ==========================

``cosine`` is SchNet's cutoff, ``polynomial`` PhysNet's switch, ``bump`` the
cutoff of SpookyNet's radial functions and ``smooth`` SpookyNet's switch (the
same names and definitions as Enerzyme's ``enerzyme.models.cutoff``).  ``bump``
is the one that is not flat at ``x = 0`` (its slope there is 0, but it starts
to fall at once: f(0.5) = e^(-1/3)); the others are 1/2 at x = 1/2.

All are differentiable in ``d`` everywhere (values outside (0, 1) are computed
on a clamped argument, so no NaN reaches a gradient).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ...errors import ConfigError

__all__ = ["CUTOFF_FUNCTIONS", "cutoff_function", "cutoff_values"]


def _cosine(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.cos(math.pi * x) + 1.0)


def _polynomial(x: torch.Tensor) -> torch.Tensor:
    x3 = x * x * x
    return 1.0 - x3 * (10.0 - 15.0 * x + 6.0 * x * x)


def _bump(x: torch.Tensor) -> torch.Tensor:
    x2 = x * x
    # x is clamped below 1 by the caller's mask argument; 1 - x^2 > 0 here
    return torch.exp(-x2 / (1.0 - x2))


def _g(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(-1.0 / t)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    up, down = _g(x), _g(1.0 - x)
    return down / (up + down)


#: name -> f(x) on the open interval (0, 1)
CUTOFF_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cosine": _cosine,
    "polynomial": _polynomial,
    "bump": _bump,
    "smooth": _smooth,
}


def cutoff_function(name: str, where: str = "cutoff_fn") -> str:
    """``name`` when it is a known cutoff function; else a ``ConfigError`` naming
    ``where`` and the valid names."""
    if not isinstance(name, str) or name not in CUTOFF_FUNCTIONS:
        raise ConfigError(f"{where}: unknown cutoff function {name!r}; choose one of "
                          f"{', '.join(CUTOFF_FUNCTIONS)}")
    return name


def cutoff_values(name: str, distance: torch.Tensor, cutoff: float,
                  cuton: float = 0.0) -> torch.Tensor:
    """f(d) of the cutoff function ``name`` (shape of ``distance``): 1 up to ``cuton``,
    0 from ``cutoff`` on (distances and radii in the same unit)."""
    if not cutoff > cuton:
        raise ValueError(f"cutoff ({cutoff}) must exceed cuton ({cuton})")
    x = (distance - cuton) * (1.0 / (cutoff - cuton))
    inside = (x > 0) & (x < 1)
    # evaluate on a safe argument everywhere (x = 1/2 outside the window), then select
    safe = torch.where(inside, x, torch.full_like(x, 0.5))
    value = CUTOFF_FUNCTIONS[name](safe)
    return torch.where(inside, value, (x <= 0).to(value.dtype))
