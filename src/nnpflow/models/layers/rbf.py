"""Radial basis functions of pair distances."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from .base import Layer

_MIN_EXPONENT = -80.0


class GaussianSmearing(Layer):
    """Gaussians of the short-range distances: ``rbf[p, k] = exp(-(d_p - mu_k)^2 / (2 w^2))``
    (exponents below -80 taken as -80).

    ``num_rbf`` centres ``mu_k`` are evenly spaced from ``cuton`` to ``cutoff_sr``
    (Å; ``cuton`` is Enerzyme's name, ``start`` nnpflow's earlier one: give either,
    default 0); the width ``w`` is their spacing.  Reads ``Dij_sr`` (P,), writes
    ``rbf`` (P, num_rbf).  ``learnable`` makes centres and width trainable.
    """

    reads = ("Dij_sr",)
    writes = ("rbf",)

    def __init__(self, num_rbf: int, cutoff_sr: float, start: float | None = None,
                 learnable: bool = False, cuton: float | None = None):
        super().__init__()
        if int(num_rbf) < 2:
            raise ConfigError(f"num_rbf must be at least 2, got {num_rbf!r}")
        if start is not None and cuton is not None and float(start) != float(cuton):
            raise ConfigError(f"cuton ({cuton}) and start ({start}) both set the first centre; "
                              "give one of them")
        start = cuton if cuton is not None else (0.0 if start is None else start)
        if isinstance(start, bool) or not isinstance(start, (int, float)) or start < 0:
            raise ConfigError(f"cuton must be a distance >= 0 in Å, got {start!r}")
        if not float(cutoff_sr) > float(start):
            raise ConfigError(f"cutoff_sr ({cutoff_sr}) must exceed cuton ({start})")
        centers = torch.linspace(float(start), float(cutoff_sr), int(num_rbf),
                                 dtype=torch.get_default_dtype())
        width = torch.tensor((float(cutoff_sr) - float(start)) / (int(num_rbf) - 1),
                             dtype=torch.get_default_dtype())
        self.learnable = bool(learnable)
        if self.learnable:
            self.centers = nn.Parameter(centers)
            self.width = nn.Parameter(width)
        else:
            self.register_buffer("centers", centers)
            self.register_buffer("width", width)
            self._coeff = -0.5 / float(width) ** 2  # a plain number: fewer graph nodes

    def forward(self, fields):
        d = fields["Dij_sr"].unsqueeze(-1) - self.centers
        coeff = -0.5 / (self.width * self.width) if self.learnable else self._coeff
        # Exponents below -80 are clamped: exp(-80) ~ 2e-35 is zero next to any sum it
        # enters, and torch's vectorised exp is ~10x slower on arguments beyond its range
        # (with 128 Gaussians most of them are, for any distance).
        fields["rbf"] = torch.exp((torch.square(d) * coeff).clamp(min=_MIN_EXPONENT))
        return fields
