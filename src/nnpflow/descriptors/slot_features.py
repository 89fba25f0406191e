"""The Chebyshev descriptor on neighbours laid out in per-centre slots, with the
gradient with respect to the pair vectors (for MD along a trajectory).

A fixed neighbour list (e.g. a Verlet list, :mod:`nnpflow.models.ann_trajectory`)
can be laid out as one padded row of ``K`` slots per centre atom: pair vectors
``v`` (N, K, 3) in Å, empty slots holding any vector longer than the cutoffs.
:class:`SlotFeatures` computes the features of
:class:`~nnpflow.descriptors.ChebyshevDescriptor` from them (the same
definitions, the same numbers to rounding: pairs at or below ``min_cutoff`` or
at or beyond a cutoff weigh zero) and, for the derivative dE/dG of an energy
with respect to those features, dE/dv of every slot vector
(:meth:`SlotFeatures.vector_gradients`), in a few dense operations without
autograd's bookkeeping:

* radial: ``D_n(v) = T_n(2 r / Rc - 1) fc(r)``, ``dD_n/dv = dD_n/dr u``,
  ``G_n = sum_j S_j D_n(v_j)`` (``S = 1``, or the neighbour's typespin ``s``
  for the weighted block);
* angular (Legendre addition theorem, :mod:`.angular`): per slot ``w = fc(r)``
  and ``w Y_lm(u)``; ``B_lm = sum_j S_j w_j Y_lm(u_j)``,
  ``G_n = 1/2 (sum_lm B_lm^2 (T_n in P_l) - sum_j S_j^2 w_j^2)``; the derivative
  of ``w Y(u)`` is ``fc'(r) Y u + fc(r) / r (I - u u^T) grad Y``.

:func:`slot_features` is the same as a differentiable torch function.
"""

from __future__ import annotations

import math

import torch

from .radial import chebyshev_rows, cutoff_function

__all__ = ["SlotFeatures", "slot_features"]


def _rowsum(x: torch.Tensor) -> torch.Tensor:
    """Sums (E,) of the rows of x (E, C): a matrix-vector product, several times
    faster than ``x.sum(1)`` for a few columns."""
    return torch.mv(x, x.new_ones(x.shape[1]))


def _lengths(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengths r (E,) of vectors v (E, 3) and unit vectors u (E, 3) (a zero
    vector gets r = 1e-12 Å and u = 0)."""
    r = _rowsum(v.square()).clamp_min_(1e-24).sqrt_()
    return r, v / r.unsqueeze(1)


class SlotFeatures:
    """Features of N centre atoms from their slot vectors, and the gradient of
    an energy with respect to those vectors.

    Parameters
    ----------
    descriptor : the :class:`~nnpflow.descriptors.ChebyshevDescriptor`.
    rad_vectors : (N, K_r, 3) Å, every neighbour within the radial cutoff.
    ang_vectors : (N, K_a, 3) Å, every neighbour within the angular cutoff.
    rad_spin, ang_spin : (N, K) typespins of the neighbours (several species).

    Attributes ``features`` (N, F) and ``closest`` (N,) Å, each atom's smallest
    slot length.
    """

    @torch.no_grad()
    def __init__(self, descriptor, rad_vectors: torch.Tensor, ang_vectors: torch.Tensor,
                 rad_spin: torch.Tensor | None = None, ang_spin: torch.Tensor | None = None):
        desc = self.descriptor = descriptor
        lo = desc.min_cutoff
        n, kr, _ = rad_vectors.shape
        ka = ang_vectors.shape[1]
        self.shape = (n, kr, ka)
        # slot weights S (N, C, K): 1 and, for several species, the typespin
        if desc.multi:
            self.s_rad = torch.stack((torch.ones_like(rad_spin), rad_spin), 1)
            self.s_ang = torch.stack((torch.ones_like(ang_spin), ang_spin), 1)
        else:
            self.s_rad = rad_vectors.new_ones(n, 1, kr)
            self.s_ang = ang_vectors.new_ones(n, 1, ka)
        # radial
        rc = desc.rad_cutoff
        r, self.u_rad = _lengths(rad_vectors.reshape(-1, 3))
        fc, dfc = cutoff_function(r, rc, derivative=True, lower=lo)
        t, dt = chebyshev_rows(r * (2.0 / rc) - 1.0, desc.rad_order, derivative=True)
        d = (t * fc).t().reshape(n, kr, desc.n_rad)                       # (N, K, R+1)
        self.dd = dt.mul_(fc * (2.0 / rc)).addcmul_(t, dfc).t().contiguous()  # dD/dr (E, R+1)
        radial = torch.bmm(self.s_rad, d)                                  # (N, C, R+1)
        closest = r.view(n, kr).amin(1) if kr else None
        # angular
        rc = desc.ang_cutoff
        basis = desc.angular_basis
        ra, u = _lengths(ang_vectors.reshape(-1, 3))
        fa, dfa = cutoff_function(ra, rc, derivative=True, lower=lo)
        vg = basis.values_and_gradients(basis.monomials(u[:, 0], u[:, 1], u[:, 2]))
        y = vg[:, 0]                                                       # (E, nY)
        self.ang = (u, ra, fa, dfa, y, vg[:, 1:])
        self.b = torch.bmm(self.s_ang, (y * fa.unsqueeze(1)).view(n, ka, -1))  # (N, C, nY)
        sq = torch.bmm(self.s_ang * self.s_ang, (fa * fa).view(n, ka, 1))  # (N, C, 1)
        angular = 0.5 * ((self.b * self.b) @ basis.pair_matrix - sq)       # (N, C, A+1)
        if ka:
            ca = ra.view(n, ka).amin(1)
            closest = ca if closest is None else torch.minimum(closest, ca)
        self.closest = closest if closest is not None else rad_vectors.new_full((n,), math.inf)
        if desc.multi:
            self.features = torch.cat((radial[:, 0], angular[:, 0], radial[:, 1],
                                       angular[:, 1]), 1)
        else:
            self.features = torch.cat((radial[:, 0], angular[:, 0]), 1)

    @torch.no_grad()
    def vector_gradients(self, de_dg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dE/dv (N, K_r, 3) and (N, K_a, 3) of the radial and angular slot
        vectors for ``de_dg`` (N, F), the derivative of an energy with respect to
        :attr:`features` (units of E per Å)."""
        desc = self.descriptor
        n, kr, ka = self.shape
        sl = desc.feature_slices()
        g = de_dg.to(self.dd.dtype)
        if desc.multi:
            g_rad = torch.stack((g[:, sl["radial"]], g[:, sl["weighted_radial"]]), 1)
            g_ang = torch.stack((g[:, sl["angular"]], g[:, sl["weighted_angular"]]), 1)
        else:
            g_rad, g_ang = g[:, sl["radial"]].unsqueeze(1), g[:, sl["angular"]].unsqueeze(1)
        # radial: dE/dD (N, K, R+1), then along each slot's direction
        gd = torch.bmm(self.s_rad.transpose(1, 2), g_rad).view(-1, desc.n_rad)
        grad_rad = (_rowsum(gd * self.dd).unsqueeze(1) * self.u_rad).view(n, kr, 3)
        # angular: dE/dB = B (gA @ pair^T), dE/dsq = -1/2 sum_n gA
        u, r, fc, dfc, y, grad_y = self.ang
        basis = desc.angular_basis
        gb = self.b * (g_ang @ basis.pair_matrix.t())                      # (N, C, nY)
        gyw = torch.bmm(self.s_ang.transpose(1, 2), gb).view(n * ka, -1)   # dE/d(w Y)
        gsq = -0.5 * g_ang.sum(2, keepdim=True).transpose(1, 2)            # (N, 1, C)
        gw = 2.0 * fc * torch.bmm(gsq, self.s_ang * self.s_ang).view(-1)   # dE/dw (sq part)
        radial = _rowsum(gyw * y) + gw
        tangent = torch.bmm(grad_y, gyw.unsqueeze(2)).squeeze(2)           # (E, 3)
        tangent = tangent - _rowsum(tangent * u).unsqueeze(1) * u
        grad_ang = (radial * dfc).unsqueeze(1) * u + (fc / r).unsqueeze(1) * tangent
        return grad_rad, grad_ang.view(n, ka, 3)


class _SlotFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rad_vectors, ang_vectors, descriptor, rad_spin, ang_spin):
        slots = SlotFeatures(descriptor, rad_vectors, ang_vectors, rad_spin, ang_spin)
        ctx.slots = slots
        ctx.mark_non_differentiable(slots.closest)
        return slots.features, slots.closest

    @staticmethod
    def backward(ctx, grad_features, grad_closest):
        grad_rad, grad_ang = ctx.slots.vector_gradients(grad_features)
        return grad_rad, grad_ang, None, None, None


def slot_features(descriptor, rad_vectors: torch.Tensor, ang_vectors: torch.Tensor,
                  rad_spin: torch.Tensor | None = None, ang_spin: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`SlotFeatures` as a torch function: ``(features (N, F), closest
    (N,) Å)``, the features differentiable (once) with respect to the slot
    vectors."""
    return _SlotFunction.apply(rad_vectors, ang_vectors, descriptor, rad_spin, ang_spin)
