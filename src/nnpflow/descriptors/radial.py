"""The radial functions of the Chebyshev descriptor: the cosine cutoff and the
Chebyshev polynomials, with their derivatives.

Shared by the features (:mod:`.chebyshev`) and their derivatives
(:mod:`.derivatives`), which therefore need not import each other.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cutoff_function", "chebyshev_rows"]


def cutoff_function(r: torch.Tensor, rc: float, derivative: bool = False,
                    all_inside: bool = False, lower: float | None = None):
    """fc(r) = 1/2 (cos(pi r / rc) + 1) for r < rc, else 0 (and dfc/dr, 1/Å).

    ``lower`` (Å): also 0 for r <= lower (the descriptor's ``min_cutoff``, for
    distances that were not filtered out beforehand).  ``all_inside=True``
    promises lower < r < rc for every entry (skips the masking)."""
    arg = r * (math.pi / rc)
    fc = torch.cos(arg).add_(1.0).mul_(0.5)
    if not all_inside:
        inside = r < rc if lower is None else (r > lower) & (r < rc)
        fc = torch.where(inside, fc, 0.0)
    if not derivative:
        return fc
    dfc = torch.sin(arg).mul_(-0.5 * math.pi / rc)
    if not all_inside:
        dfc = torch.where(inside, dfc, 0.0)
    return fc, dfc


def chebyshev_rows(x: torch.Tensor, order: int, derivative: bool = False,
                   out: torch.Tensor | None = None):
    """T_n(x), n = 0..order, as rows of an (order + 1, E) tensor (and dT_n/dx);
    ``out``: an (order + 1, E) tensor to fill with T_n."""
    e = x.shape[0]
    t = torch.empty(order + 1, e, dtype=x.dtype, device=x.device) if out is None else out
    t[0] = 1.0
    if order >= 1:
        t[1] = x
    x2 = 2.0 * x
    for n in range(1, order):
        torch.mul(x2, t[n], out=t[n + 1])
        t[n + 1].sub_(t[n - 1])
    if not derivative:
        return t
    dt = torch.empty_like(t)
    dt[0] = 0.0
    if order >= 1:
        dt[1] = 1.0
    for n in range(1, order):
        # T'_{n+1} = 2 T_n + 2 x T'_n - T'_{n-1}
        torch.mul(x2, dt[n], out=dt[n + 1])
        dt[n + 1].add_(t[n], alpha=2.0).sub_(dt[n - 1])
    return t, dt
