"""Per-edge evaluation of aenet's angular Chebyshev terms (no triplet loops).

aenet's angular descriptor of atom i sums over unordered neighbour pairs j < k

    G_n = sum_{j<k} w_j w_k T_n(cos theta_jk),   cos theta_jk = u_j . u_k,

with unit vectors u and per-neighbour weights w (cutoff function, optionally
times the typespin).  Writing the Chebyshev polynomial in Legendre polynomials,
``T_n = sum_l a_nl P_l``, and using the addition theorem

    P_l(u . v) = sum_m Y_lm(u) Y_lm(v),
    Y_l0 = dP_l/dz,  Y_lm = sqrt(2 (l-m)!/(l+m)!) d^m P_l/dz^m(z) Re/Im (x + i y)^m

(real, unnormalised spherical harmonics on the unit sphere; the sine powers of
the associated Legendre functions are absorbed in (x + i y)^m), gives

    sum_{j<k} w_j w_k P_l(u_j . u_k) = 1/2 (sum_m B_lm^2 - sum_j w_j^2),
    B_lm = sum_j w_j Y_lm(u_j),

so the features need one pass over the neighbours (edges) instead of one over
all pairs of neighbours (triplets); the force contraction likewise (see
:mod:`nnpflow.descriptors.derivatives`).  This is the same mathematics, summed in
another order: it reproduces aenet's values to rounding (~1e-14 relative).

The Y_lm are polynomials in (x, y, z); this module evaluates them and their
gradients through monomials of degree <= L and fixed coefficient matrices.
"""

from __future__ import annotations

from functools import lru_cache
from math import factorial, sqrt

import numpy as np
import torch
from numpy.polynomial import chebyshev as npcheb
from numpy.polynomial import legendre as npleg

__all__ = ["AngularBasis"]


def _monomials(order: int) -> list[tuple[int, int, int]]:
    """Exponents (a, b, c) of x^a y^b z^c with a + b + c <= order, by degree."""
    out = []
    for deg in range(order + 1):
        for a in range(deg, -1, -1):
            for b in range(deg - a, -1, -1):
                out.append((a, b, deg - a - b))
    return out


def _poly_add(p: dict, key, value: float) -> None:
    if value != 0.0:
        p[key] = p.get(key, 0.0) + value


def _harmonics(order: int):
    """Polynomials Y_lm (as {exponent: coeff}) with their l, for l <= order."""
    polys, ls = [], []
    for l in range(order + 1):
        leg = npleg.leg2poly([0.0] * l + [1.0])              # P_l in powers of z
        for m in range(l + 1):
            dz = np.polynomial.polynomial.polyder(leg, m) if m else leg   # d^m P_l/dz^m
            scale = sqrt((1.0 if m == 0 else 2.0) * factorial(l - m) / factorial(l + m))
            # (x + i y)^m = sum_k C(m, k) x^(m-k) (i y)^k
            parts = [("c", {}), ("s", {})] if m else [("c", {})]
            for kind, target in parts:
                for k in range(m + 1):
                    binom = factorial(m) / (factorial(k) * factorial(m - k))
                    if kind == "c" and k % 2 == 0:
                        sign = (-1) ** (k // 2)
                    elif kind == "s" and k % 2 == 1:
                        sign = (-1) ** ((k - 1) // 2)
                    else:
                        continue
                    for pz, cz in enumerate(dz):
                        _poly_add(target, (m - k, k, pz), scale * binom * sign * float(cz))
                polys.append(target)
                ls.append(l)
    return polys, ls


def _derivative(poly: dict, axis: int) -> dict:
    out = {}
    for exp, c in poly.items():
        if exp[axis] > 0:
            e = list(exp)
            e[axis] -= 1
            _poly_add(out, tuple(e), c * exp[axis])
    return out


@lru_cache(maxsize=None)
def _basis_arrays(order: int):
    mono = _monomials(order)
    index = {e: i for i, e in enumerate(mono)}
    polys, ls = _harmonics(order)
    n_y, n_m = len(polys), len(mono)
    coef = np.zeros((4, n_y, n_m))
    for y, p in enumerate(polys):
        for e, c in p.items():
            coef[0, y, index[e]] += c
        for axis in range(3):
            for e, c in _derivative(p, axis).items():
                coef[1 + axis, y, index[e]] += c
    # recipe to build each monomial of degree >= 1 from one of degree - 1
    recipe = []
    for i, e in enumerate(mono):
        if i == 0:
            continue
        axis = next(a for a in range(3) if e[a] > 0)
        parent = list(e)
        parent[axis] -= 1
        recipe.append((index[tuple(parent)], axis))
    # Chebyshev -> Legendre: T_n = sum_l a[n, l] P_l
    cheb_leg = np.zeros((order + 1, order + 1))
    for n in range(order + 1):
        leg = npleg.poly2leg(npcheb.cheb2poly([0.0] * n + [1.0]))
        cheb_leg[n, :len(leg)] = leg
    return coef, np.array(ls), recipe, cheb_leg


class AngularBasis:
    """Harmonic basis Y_lm, l <= order, for the angular Chebyshev terms.

    Attributes
    ----------
    order : int
        Angular (Chebyshev) order L.
    n_harmonics : int
        Number of Y_lm functions, (L + 1)^2.
    l_of : Tensor (n_harmonics,) int64
        Degree l of each function.
    pair_matrix : Tensor (n_harmonics, L + 1)
        ``G_n = 1/2 (B^2 @ pair_matrix)_n - 1/2 sum_j w_j^2`` (uses T_n(1) = 1).
    degree_matrix : Tensor (n_harmonics, L + 1)
        One-hot degree of each function (``x @ degree_matrix`` sums per degree l).
    """

    def __init__(self, order: int, device="cpu", dtype=torch.float64):
        coef, ls, recipe, cheb_leg = _basis_arrays(int(order))
        self.order = int(order)
        self._recipe = recipe
        self.n_monomials = coef.shape[2]
        self.n_harmonics = coef.shape[1]
        self.values_coef_t = torch.as_tensor(coef[0].T.copy(), dtype=dtype, device=device)
        # (n_monomials, 4 * n_harmonics): [Y, dY/dx, dY/dy, dY/dz] blocks
        self.all_coef_t = torch.as_tensor(
            np.concatenate([coef[k].T for k in range(4)], axis=1).copy(), dtype=dtype,
            device=device)
        # (nY, 4 nM): row m holds the monomial coefficients of [Y_m, dY_m/dx,
        # dY_m/dy, dY_m/dz]; beta @ it turns per-harmonic weights into
        # per-monomial weights of the four functions
        self.monomial_weights = torch.as_tensor(
            np.concatenate([coef[k] for k in range(4)], axis=1).copy(), dtype=dtype,
            device=device)
        self.l_of = torch.as_tensor(ls, dtype=torch.long, device=device)
        self.cheb_leg = torch.as_tensor(cheb_leg, dtype=dtype, device=device)
        onehot = np.zeros((len(ls), self.order + 1))
        onehot[np.arange(len(ls)), ls] = 1.0
        self.pair_matrix = torch.as_tensor(onehot @ cheb_leg.T, dtype=dtype, device=device)
        self.degree_matrix = torch.as_tensor(onehot, dtype=dtype, device=device)

    def monomials(self, ux: torch.Tensor, uy: torch.Tensor, uz: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """Monomials of the unit-vector components, shape (E, n_monomials) (the
        transpose of ``out``, an (n_monomials, E) tensor to fill, when given)."""
        e = ux.shape[0]
        if out is None:
            out = torch.empty(self.n_monomials, e, dtype=ux.dtype, device=ux.device)
        out[0] = 1.0
        comps = (ux, uy, uz)
        for i, (parent, axis) in enumerate(self._recipe, start=1):
            torch.mul(out[parent], comps[axis], out=out[i])
        return out.t()

    def values(self, mono_t: torch.Tensor) -> torch.Tensor:
        """Y_lm per edge, (E, n_harmonics), from :meth:`monomials`."""
        return mono_t @ self.values_coef_t

    def values_and_gradients(self, mono_t: torch.Tensor) -> torch.Tensor:
        """(E, 4, n_harmonics): Y_lm and its gradient (d/dx, d/dy, d/dz) treating
        x, y, z as independent (project onto the sphere's tangent plane to use)."""
        return (mono_t @ self.all_coef_t).view(mono_t.shape[0], 4, self.n_harmonics)

    def to(self, device=None, dtype=None) -> "AngularBasis":
        other = object.__new__(AngularBasis)
        other.__dict__.update(self.__dict__)
        for name in ("values_coef_t", "all_coef_t", "monomial_weights", "cheb_leg",
                     "pair_matrix", "degree_matrix"):
            setattr(other, name, getattr(self, name).to(device=device, dtype=dtype))
        other.l_of = self.l_of.to(device=device)
        return other
