"""The Chebyshev descriptor on neighbours laid out in per-centre slots,
differentiable with respect to the pair vectors (for MD along a trajectory).

A fixed neighbour list (e.g. a Verlet list, :mod:`nnpflow.models.ann_trajectory`)
can be laid out as one padded row of ``K`` slots per centre atom: pair vectors
``v`` (N, K, 3) in Å, empty slots holding any vector longer than the cutoffs.
:func:`slot_features` computes the features of
:class:`~nnpflow.descriptors.ChebyshevDescriptor` from them (the same
definitions, the same numbers to rounding: pairs at or below ``min_cutoff`` or
at or beyond a cutoff weigh zero), so that torch autograd gives the forces from
the positions in a few operations: each block's per-pair terms are one autograd
node with an analytic derivative (:class:`_RadialTerms`, :class:`_AngularTerms`),
and the sums over a centre's slots are batched products.

* radial: ``D_n(v) = T_n(2 r / Rc - 1) fc(r)``, ``dD_n/dv = dD_n/dr u``;
* angular (Legendre addition theorem, :mod:`.angular`): per slot ``fc(r) Y_lm(u)``
  and ``fc(r)``, with ``d/dv = fc'(r) (.) u + fc(r) / r (I - u u^T) grad Y``;
  ``G_n = 1/2 (sum_lm B_lm^2 (T_n in P_l) - sum_j w_j^2)``, ``B_lm = sum_j w_j Y_lm(u_j)``.

Typespin-weighted blocks (several species) weight the slots with the
neighbours' typespins ``s`` (N, K).
"""

from __future__ import annotations

import math

import torch

from .radial import chebyshev_rows

__all__ = ["slot_features"]


def _cutoff(r: torch.Tensor, lo: float, rc: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fc(r) and dfc/dr (1/Å) for lo < r < rc, zero elsewhere."""
    inside = (r > lo) & (r < rc)
    arg = r * (math.pi / rc)
    fc = torch.where(inside, torch.cos(arg).add_(1.0).mul_(0.5), 0.0)
    dfc = torch.where(inside, torch.sin(arg).mul_(-0.5 * math.pi / rc), 0.0)
    return fc, dfc


def _lengths(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengths r (E,) of vectors v (E, 3) and unit vectors u (E, 3) (a zero
    vector gets r = 1e-12 Å and u = 0)."""
    r = _rowsum(v.square()).clamp_min_(1e-24).sqrt_()
    return r, v / r.unsqueeze(1)


def _rowsum(x: torch.Tensor) -> torch.Tensor:
    """Sums (E,) of the rows of x (E, C): a matrix-vector product, several times
    faster than ``x.sum(1)`` for a few columns."""
    return torch.mv(x, x.new_ones(x.shape[1]))


class _RadialTerms(torch.autograd.Function):
    """``T_n(2 r / Rc - 1) fc(r)`` (N, K, R+1) of slot vectors (N, K, 3), and the
    lengths r (N, K) (not differentiable)."""

    @staticmethod
    def forward(ctx, v, lo: float, rc: float, order: int):
        n, k, _ = v.shape
        r, u = _lengths(v.reshape(-1, 3))
        fc, dfc = _cutoff(r, lo, rc)
        t, dt = chebyshev_rows(r * (2.0 / rc) - 1.0, order, derivative=True)   # (R+1, E)
        d = (t * fc).t().contiguous()                                      # (E, R+1)
        dd = (dt.mul_(fc * (2.0 / rc)).addcmul_(t, dfc)).t().contiguous()  # d/dr
        ctx.save_for_backward(u, dd)
        r = r.view(n, k)
        ctx.mark_non_differentiable(r)
        return d.view(n, k, order + 1), r

    @staticmethod
    def backward(ctx, grad_d, grad_r):
        u, dd = ctx.saved_tensors
        g = _rowsum(grad_d.reshape(dd.shape) * dd).unsqueeze(1)            # (E, 1)
        return (g * u).view(grad_d.shape[0], grad_d.shape[1], 3), None, None, None


class _AngularTerms(torch.autograd.Function):
    """``fc(r) Y_lm(u)`` (N, K, nY) and ``fc(r)`` (N, K) of slot vectors
    (N, K, 3), and the lengths r (N, K) (not differentiable)."""

    @staticmethod
    def forward(ctx, v, lo: float, rc: float, basis):
        n, k, _ = v.shape
        r, u = _lengths(v.reshape(-1, 3))
        fc, dfc = _cutoff(r, lo, rc)
        mono = basis.monomials(u[:, 0], u[:, 1], u[:, 2])                  # (E, nM)
        vg = basis.values_and_gradients(mono)                              # (E, 4, nY)
        y = vg[:, 0]
        yw = y * fc.unsqueeze(1)
        ctx.save_for_backward(u, r, fc, dfc, y, vg[:, 1:])
        lengths = r.view(n, k)
        ctx.mark_non_differentiable(lengths)
        return yw.view(n, k, -1), fc.view(n, k), lengths

    @staticmethod
    def backward(ctx, grad_yw, grad_w, grad_r):
        u, r, fc, dfc, y, grad_y = ctx.saved_tensors
        e = u.shape[0]
        g = grad_yw.reshape(e, -1)                                         # (E, nY)
        radial = _rowsum(g * y)
        if grad_w is not None:
            radial = radial + grad_w.reshape(e)
        tangent = torch.bmm(grad_y, g.unsqueeze(2)).squeeze(2)             # (E, 3)
        tangent = tangent - _rowsum(tangent * u).unsqueeze(1) * u
        grad_v = (radial * dfc).unsqueeze(1) * u + (fc / r).unsqueeze(1) * tangent
        return grad_v.view(grad_yw.shape[0], grad_yw.shape[1], 3), None, None, None


def slot_features(descriptor, rad_vectors: torch.Tensor, ang_vectors: torch.Tensor,
                  rad_spin: torch.Tensor | None = None, ang_spin: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, F) of the N centre atoms from their slot vectors (Å):
    ``rad_vectors`` (N, K_r, 3) holding every neighbour within the radial cutoff,
    ``ang_vectors`` (N, K_a, 3) every neighbour within the angular cutoff (other
    slots: longer vectors, or pairs at or below ``min_cutoff``, which weigh zero).
    ``rad_spin``/``ang_spin`` (N, K): the neighbours' typespins (several species).

    Returns the features (differentiable with respect to the vectors) and each
    atom's smallest slot length (N,) Å.
    """
    desc = descriptor
    lo = desc.min_cutoff
    radial, r_rad = _RadialTerms.apply(rad_vectors, lo, desc.rad_cutoff, desc.rad_order)
    yw, w, r_ang = _AngularTerms.apply(ang_vectors, lo, desc.ang_cutoff, desc.angular_basis)
    closest = torch.minimum(r_rad.amin(1), r_ang.amin(1)) if r_rad.shape[1] and r_ang.shape[1] \
        else (r_rad if r_rad.shape[1] else r_ang).amin(1)
    if desc.multi:
        one = torch.ones_like(rad_spin)
        rad = torch.bmm(torch.stack((one, rad_spin), 1), radial)          # (N, 2, R+1)
        spin = torch.stack((torch.ones_like(ang_spin), ang_spin), 1)       # (N, 2, K_a)
    else:
        rad = radial.sum(1, keepdim=True)                                  # (N, 1, R+1)
        spin = torch.ones_like(w).unsqueeze(1)                             # (N, 1, K_a)
    basis = desc.angular_basis
    b = torch.bmm(spin, yw)                                                # (N, C, nY)
    sq = torch.bmm(spin * spin, (w * w).unsqueeze(2))                      # (N, C, 1)
    ang = 0.5 * ((b * b) @ basis.pair_matrix - sq)                         # (N, C, A+1)
    if desc.multi:
        return torch.cat((rad[:, 0], ang[:, 0], rad[:, 1], ang[:, 1]), 1), closest
    return torch.cat((rad[:, 0], ang[:, 0]), 1), closest
