"""The base class of layer-stack layers and the shifted-softplus activation."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Layer(nn.Module):
    """One step of a layer-stack model: reads named fields, writes named fields.

    Subclasses set ``reads`` (fields that must exist before the layer runs),
    ``optional_reads`` (used when present) and ``writes`` (fields it adds or
    replaces), as class or instance attributes, and implement
    ``forward(fields) -> fields`` (the same dict, updated).  ``requirements()``
    tells the batch builder which pair lists the layer needs.  The names of a
    layer's constructor parameters are the names users write under ``params``
    and ``build_params``; their resolved values are stored in the model file.
    """

    reads: tuple[str, ...] = ()
    optional_reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    def requirements(self) -> dict[str, float]:
        """Pair-list needs: ``{"cutoff_sr": r}`` (short-range pairs within ``r`` Å),
        ``{"cutoff_lr": r}`` (long-range pairs; ``math.inf`` = all pairs)."""
        return {}

    def forward(self, fields: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


_LOG2 = math.log(2.0)


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """``softplus(x) - log 2`` (zero at zero), SchNet's activation."""
    return F.softplus(x) - _LOG2


def cosine_cutoff(distance: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``0.5 (cos(pi d / rc) + 1)`` for ``d < rc``, else 0 (d and rc in Å)."""
    value = 0.5 * (torch.cos(distance * (math.pi / cutoff)) + 1.0)
    return value * (distance < cutoff).to(value.dtype)


def smooth_step_down(x: torch.Tensor) -> torch.Tensor:
    """``1 - 10x^3 + 15x^4 - 6x^5`` on ``x`` clipped to [0, 1]: 1 at 0, 0 at 1, with
    vanishing first and second derivatives at both ends."""
    x = x.clamp(0.0, 1.0)
    x3 = x * x * x
    return 1.0 - x3 * (10.0 - 15.0 * x + 6.0 * x * x)
