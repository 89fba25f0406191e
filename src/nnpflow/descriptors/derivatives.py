"""Analytic descriptor derivatives in compact form, and the force contraction.

A :class:`DescriptorDerivatives` holds only geometry: the edges (centre i,
neighbour j folded onto its home-cell atom, and the vector r_j - r_i + S @ cell
in Å) of all neighbours with min_cutoff < r <= max(rad_cutoff, ang_cutoff),
plus the species of the atoms (for the typespin weights).  ``forces(dE_dG)``
evaluates

    F = -sum_i sum_f dE/dG_if * dG_if/dR

from it without ever forming per-triplet or per-feature gradient blocks:

* radial: per edge  rho_e = sum_n (w_in + s_j w'_in) d/dr[T_n(x) fc(r)],
  dE/dv_e += rho_e u_e, with w = dE/dG for the centre's radial (w) and weighted
  radial (w') features;
* angular (Legendre addition theorem, see :mod:`.angular`): with
  lambda_il = sum_n w_in a_nl, B_ilm = sum_j fc_j Y_lm(u_j) (and s_j-weighted B'),
  dE/dB_ilm = lambda_il B_ilm and dE/d(sum_j fc_j^2) = -1/2 sum_l lambda_il, so per
  edge  dE/dv_e += [fc' h + 2 sigma fc fc' - fc (g . u) / r] u + fc g / r,
  h = sum_m beta_m Y_m(u), g = sum_m beta_m grad Y_m(u), beta = lambda B (+ s_j beta');
* dE/dR_j += dE/dv_e, dE/dR_i -= dE/dv_e (images fold onto their atoms).

Per edge this needs the Chebyshev/harmonic values of one vector only, so the
stored form is three small arrays per structure (:meth:`to_arrays`), and the
contraction is a few sparse-times-dense products, differentiable with respect to
dE/dG (force training backpropagates through it).  The geometric coefficients
are cached on first use (:meth:`precompute`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .chebyshev import chebyshev_rows, csr_matrix, cutoff_function, stacked_csr, transposed

if TYPE_CHECKING:  # pragma: no cover
    from .chebyshev import ChebyshevDescriptor

__all__ = ["DescriptorDerivatives"]

#: Names of the arrays of :meth:`DescriptorDerivatives.to_arrays`.
ARRAY_NAMES = ("edge_center", "edge_neighbor", "edge_vector")


class DescriptorDerivatives:
    """Compact derivatives of the features of one structure or a batch.

    Attributes
    ----------
    descriptor : ChebyshevDescriptor
    species_index : Tensor (N,) int64
        Species indices of the atoms (descriptor order).
    center, neighbor : Tensor (E,) int64
        Edge atoms (neighbour folded to its home-cell atom), grouped by centre.
    vector : Tensor (E, 3)
        Edge vectors in Å.
    atom_counts : list[int]
        Atoms per structure (one entry unless concatenated).
    """

    def __init__(self, descriptor: "ChebyshevDescriptor", species_index: torch.Tensor,
                 center: torch.Tensor, neighbor: torch.Tensor, vector: torch.Tensor,
                 atom_counts: Sequence[int] | None = None):
        self.descriptor = descriptor
        self.species_index = species_index
        self.center = center
        self.neighbor = neighbor
        self.vector = vector
        self.atom_counts = list(atom_counts) if atom_counts is not None else [
            int(species_index.shape[0])]
        self._cache: dict | None = None

    # ----------------------------------------------------------------- basics
    @property
    def n_atoms(self) -> int:
        return int(self.species_index.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.center.shape[0])

    @property
    def device(self) -> torch.device:
        return self.vector.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vector.dtype

    def __repr__(self) -> str:
        return (f"DescriptorDerivatives(n_atoms={self.n_atoms}, n_edges={self.n_edges}, "
                f"structures={len(self.atom_counts)}, device={str(self.device)!r}, "
                f"dtype={self.dtype}, cached={self._cache is not None})")

    def to(self, device=None, dtype: torch.dtype | None = None) -> "DescriptorDerivatives":
        """A copy on another device/dtype (descriptor moved too; cache dropped)."""
        desc = self.descriptor
        if (device is not None and torch.device(device) != desc.device) or (
                dtype is not None and dtype != desc.dtype):
            desc = desc.to(device=device, dtype=dtype)
        dev = desc.device
        return DescriptorDerivatives(desc, self.species_index.to(dev), self.center.to(dev),
                                     self.neighbor.to(dev),
                                     self.vector.to(device=dev, dtype=desc.dtype),
                                     self.atom_counts)

    # ------------------------------------------------------ batch handling
    @classmethod
    def split_batch(cls, descriptor, species: torch.Tensor, center: torch.Tensor,
                    neighbor: torch.Tensor, vector: torch.Tensor,
                    counts: Sequence[int]) -> list["DescriptorDerivatives"]:
        """Per-structure objects (local atom indices) from a batch's edges."""
        device = center.device
        counts_t = torch.tensor(list(counts), dtype=torch.long, device=device)
        ends = torch.cumsum(counts_t, 0)
        starts = ends - counts_t
        edge_ends = torch.searchsorted(center, ends)
        edge_counts = torch.diff(edge_ends, prepend=edge_ends.new_zeros(1))
        n_struct = len(counts)
        owner = torch.repeat_interleave(torch.arange(n_struct, device=device), edge_counts,
                                        output_size=center.shape[0])
        base = starts.index_select(0, owner)
        lc, ln = center - base, neighbor - base
        ec = edge_counts.tolist()
        return [cls(descriptor, sp, c, n, v)
                for sp, c, n, v in zip(torch.split(species, list(counts)), torch.split(lc, ec),
                                       torch.split(ln, ec), torch.split(vector, ec))]

    @staticmethod
    def concatenate(parts: Sequence["DescriptorDerivatives"]) -> "DescriptorDerivatives":
        """One object for a batch of structures (atom indices offset), whose
        :meth:`forces` takes the batch's concatenated dE/dG (sum N_s, F).
        Cached coefficients of the parts are reused when all parts have them."""
        parts = list(parts)
        if not parts:
            raise ValueError("concatenate needs at least one DescriptorDerivatives")
        first = parts[0]
        fp = first.descriptor.fingerprint
        for p in parts[1:]:
            if p.descriptor.fingerprint != fp:
                raise ValueError("cannot concatenate derivatives of different descriptors")
            if p.device != first.device or p.dtype != first.dtype:
                raise ValueError("cannot concatenate derivatives on different devices/dtypes")
        if len(parts) == 1:
            return first
        n_atoms = [p.n_atoms for p in parts]
        device = first.device
        offsets = torch.tensor(np.concatenate([[0], np.cumsum(n_atoms)[:-1]]), dtype=torch.long,
                               device=device)
        n_edges = torch.tensor([p.n_edges for p in parts], dtype=torch.long, device=device)
        shift = torch.repeat_interleave(offsets, n_edges,
                                        output_size=sum(p.n_edges for p in parts))
        out = DescriptorDerivatives(
            first.descriptor,
            torch.cat([p.species_index for p in parts]),
            torch.cat([p.center for p in parts]) + shift,
            torch.cat([p.neighbor for p in parts]) + shift,
            torch.cat([p.vector for p in parts]),
            [c for p in parts for c in p.atom_counts])
        if all(p._cache is not None for p in parts):
            out._cache = _concat_caches([p._cache for p in parts], parts)
        return out

    # -------------------------------------------------------------- storage
    def to_arrays(self, dtype=np.float32) -> dict[str, np.ndarray]:
        """Arrays for storage, each ragged along axis 0 (E edges):

        ``edge_center`` (E,) int32, ``edge_neighbor`` (E,) int32 (atom indices
        within the structure), ``edge_vector`` (E, 3) ``dtype`` in Å.
        """
        return {
            "edge_center": self.center.cpu().numpy().astype(np.int32),
            "edge_neighbor": self.neighbor.cpu().numpy().astype(np.int32),
            "edge_vector": self.vector.detach().cpu().numpy().astype(dtype),
        }

    @classmethod
    def from_arrays(cls, arrays: dict, species_index, descriptor: "ChebyshevDescriptor"
                    ) -> "DescriptorDerivatives":
        """Rebuild from :meth:`to_arrays` output and the structure's species
        indices (N,), on the descriptor's device and dtype."""
        missing = [k for k in ARRAY_NAMES if k not in arrays]
        if missing:
            raise ValueError(f"derivative arrays missing: {', '.join(missing)}")
        dev = descriptor.device
        species = torch.as_tensor(np.asarray(species_index), dtype=torch.long, device=dev)
        center = torch.as_tensor(np.asarray(arrays["edge_center"]), device=dev).to(torch.long)
        neighbor = torch.as_tensor(np.asarray(arrays["edge_neighbor"]), device=dev).to(torch.long)
        vector = torch.as_tensor(np.asarray(arrays["edge_vector"]), device=dev).to(descriptor.dtype)
        n = species.shape[0]
        e = center.shape[0]
        if center.shape != (e,) or neighbor.shape != (e,) or vector.shape != (e, 3):
            raise ValueError(f"inconsistent derivative arrays: edge_center {tuple(center.shape)}, "
                             f"edge_neighbor {tuple(neighbor.shape)}, "
                             f"edge_vector {tuple(vector.shape)}")
        if e and (int(center.min()) < 0 or int(center.max()) >= n or int(neighbor.min()) < 0
                  or int(neighbor.max()) >= n):
            raise ValueError(f"derivative edge indices outside 0..{n - 1}")
        if e > 1 and bool((center[1:] < center[:-1]).any()):
            raise ValueError("derivative edges are not grouped by centre atom")
        if n and (int(species.min()) < 0 or int(species.max()) >= len(descriptor.species)):
            raise ValueError("species index outside the descriptor's species list")
        return cls(descriptor, species, center, neighbor, vector)

    # ---------------------------------------------------------- contraction
    def precompute(self) -> "DescriptorDerivatives":
        """Compute and keep the geometric coefficients used by :meth:`forces`
        (about 0.3 kB per edge in float64, ~2 MB for a 108-atom Cu/Au cell with
        6 Å cutoff; see :meth:`cache_nbytes`); returns ``self``.
        :meth:`concatenate` reuses the parts' coefficients."""
        if self._cache is None:
            self._cache = _build_cache(self)
        return self

    def clear_cache(self) -> None:
        """Drop the coefficients of :meth:`precompute`."""
        self._cache = None

    def cache_nbytes(self) -> int:
        """Bytes held by the coefficients of :meth:`precompute` (0 if none)."""
        if self._cache is None:
            return 0
        seen: dict[int, int] = {}

        def add(t):
            if isinstance(t, list):
                for x in t:
                    add(x)
            elif t.layout == torch.sparse_csr:
                for x in (t.crow_indices(), t.col_indices(), t.values()):
                    add(x)
            else:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

        for value in self._cache.values():
            add(value)
        return int(sum(seen.values()))

    def forces(self, dE_dG: torch.Tensor) -> torch.Tensor:
        """Forces (N, 3) in eV/Å: ``-sum_i sum_f dE/dG_if dG_if/dR``.

        ``dE_dG`` (N, F) is the derivative of the energy (eV) with respect to the
        features, in the atom order of this object; the result is
        differentiable with respect to it (any order).
        """
        desc = self.descriptor
        n = self.n_atoms
        if tuple(dE_dG.shape) != (n, desc.n_features):
            raise ValueError(f"dE_dG has shape {tuple(dE_dG.shape)}, expected "
                             f"({n}, {desc.n_features})")
        cache = self.precompute()._cache
        w = dE_dG.to(dtype=self.dtype)
        sl = desc.feature_slices()
        # radial: rho_e = sum_n (w_in + s_j w'_in) d/dr[T_n fc](r_e)
        x = [w[:, sl["radial"]]]
        if desc.multi:
            x.append(w[:, sl["weighted_radial"]])
        o = _EdgeBlockProduct.apply(torch.stack(x, dim=2), cache["rad_op"], cache["rad_seg"],
                                    cache["rad_values"])                  # (E, k)
        rho = o[:, 0] + cache["spin"] * o[:, 1] if desc.multi else o[:, 0]
        gv = rho.unsqueeze(0) * cache["u_t"]                             # (3, E)
        # angular (see the module docstring)
        if cache["ang_idx"].shape[0]:
            basis = desc.angular_basis
            lam = w[:, sl["angular"]] @ basis.cheb_leg                   # (N, A+1)
            betas = [lam.index_select(1, basis.l_of) * cache["B"][0]]
            sigmas = [-0.5 * lam.sum(dim=1)]
            if desc.multi:
                lam_w = w[:, sl["weighted_angular"]] @ basis.cheb_leg
                betas.append(lam_w.index_select(1, basis.l_of) * cache["B"][1])
                sigmas.append(-0.5 * lam_w.sum(dim=1))
            ea = cache["ang_idx"].shape[0]
            nm = basis.n_monomials
            # per-centre monomial weights of [Y, dY/dx, dY/dy, dY/dz]: (N, nM, 4 k)
            gam = torch.stack([(b @ basis.monomial_weights).view(n, 4, nm) for b in betas], dim=3)
            gam = gam.permute(0, 2, 1, 3).reshape(n, nm, -1)
            o = _EdgeBlockProduct.apply(gam, cache["ang_op"], cache["ang_seg"],
                                        cache["ang_values"])             # (Ea, 4 k)
            o = o.view(ea, 4, -1)                                        # (Ea, [Y, grad], k)
            ca = cache["ang_center"]
            sig = sigmas[0].index_select(0, ca)
            if desc.multi:
                sa = cache["ang_spin"]
                hg = o[:, :, 0] + sa.unsqueeze(1) * o[:, :, 1]
                sig = sig + (sa * sa) * sigmas[1].index_select(0, ca)
            else:
                hg = o[:, :, 0]
            ua = cache["ang_u_t"]                                        # (3, Ea)
            fa, dfa, fa_r = cache["ang_f"], cache["ang_df"], cache["ang_f_r"]
            g = hg[:, 1:].t()                                            # (3, Ea)
            gu = g[0] * ua[0] + g[1] * ua[1] + g[2] * ua[2]
            coef = dfa * hg[:, 0] + (2.0 * sig) * (fa * dfa) - fa_r * gu
            gv = gv.index_add(1, cache["ang_idx"], coef.unsqueeze(0) * ua + fa_r.unsqueeze(0) * g)
        # fold edges onto atoms: F_i += dE/dv_e, F_j -= dE/dv_e
        f = torch.zeros(3, n, dtype=gv.dtype, device=gv.device)
        f = f.index_add(1, self.center, gv).index_add(1, self.neighbor, -gv)
        return f.t()


class _EdgeBlockProduct(torch.autograd.Function):
    """``y[r, ch] = sum_m V[r, m] X[owner_r, m, ch]`` for rows r grouped by owner.

    Forward: a CSR product (rows r, columns owner_r * M + m, values V).
    Backward: ``dX[c, m, ch] = sum_{r: owner_r = c} V[r, m] dy[r, ch]``, a segment
    sum (CSR (N, R) of ones) -- no transposed operator, no sorting.
    """

    @staticmethod
    def forward(ctx, x, op, seg, values):
        ctx.seg = seg
        ctx.values = values
        ctx.x_shape = x.shape
        return op @ x.reshape(-1, x.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        values, seg = ctx.values, ctx.seg
        if torch.is_grad_enabled():
            # differentiable form (double backward through the contraction)
            parts = [seg @ (values * grad[:, ch:ch + 1]) for ch in range(grad.shape[1])]
        else:
            # the segment-sum pattern with the output gradient as its values:
            # no (R, M) temporary
            crow, col = seg.crow_indices(), seg.col_indices()
            parts = [csr_matrix(crow, col, grad[:, ch].contiguous(), seg.shape) @ values
                     for ch in range(grad.shape[1])]
        return torch.stack(parts, dim=2).view(ctx.x_shape), None, None, None


def _csr(crow, col, values, size):
    return csr_matrix(crow, col, values, size)


def _index_dtype(n: int):
    return torch.int32 if n < 2**31 - 1 else torch.long


def _block_operator(owner: torch.Tensor, values: torch.Tensor, n_owner: int):
    """CSR (R, N M) with row r holding ``values[r]`` at columns owner_r M + m, and
    the segment-sum CSR (N, R) of ones (rows grouped by ``owner``, sorted)."""
    r, m = values.shape
    device = values.device
    idx = _index_dtype(max(r * m, n_owner * m) + 1)
    crow = torch.arange(0, r * m + 1, m, device=device, dtype=idx)
    col = (owner.to(idx).unsqueeze(1) * m + torch.arange(m, device=device, dtype=idx)).reshape(-1)
    op = _csr(crow, col, values.reshape(-1), (r, n_owner * m))
    counts = torch.bincount(owner, minlength=n_owner)
    crow_s = torch.zeros(n_owner + 1, dtype=idx, device=device)
    torch.cumsum(counts, 0, out=crow_s[1:])
    seg = _csr(crow_s, torch.arange(r, device=device, dtype=idx),
               torch.ones(r, dtype=values.dtype, device=device), (n_owner, r))
    return op, seg


@torch.no_grad()
def _build_cache(d: DescriptorDerivatives) -> dict:
    """Geometric coefficients of :meth:`DescriptorDerivatives.forces`.

    Keys: ``u_t`` (3, E) unit vectors; ``spin`` (E,) neighbour typespins;
    ``rad_values`` (E, R+1) d/dr[T_n fc](r_e) with ``rad_op``/``rad_seg`` (see
    :func:`_block_operator`, owner = centre); ``ang_idx`` (Ea,) angular edges;
    ``ang_center``, ``ang_spin``, ``ang_f``, ``ang_df``, ``ang_f_r`` (fc / r) per
    angular edge, ``ang_u_t`` (3, Ea); ``B`` list of (N, nY) harmonic sums
    (unweighted, weighted); ``ang_values`` (Ea, nM) monomials of the unit
    vectors with ``ang_op``/``ang_seg``.
    """
    desc = d.descriptor
    device, dtype = d.device, d.dtype
    n, e = d.n_atoms, d.n_edges
    v = d.vector
    vt = v.t()
    r = torch.sqrt(vt[0] * vt[0] + vt[1] * vt[1] + vt[2] * vt[2])
    u_t = vt / r
    spin = desc.typespin.index_select(0, d.species_index).index_select(0, d.neighbor)
    cache: dict = {"u_t": u_t, "spin": spin}
    # radial: d/dr [T_n(2r/Rc - 1) fc(r)] per edge and order
    rc = desc.rad_cutoff
    t, dt = chebyshev_rows(r * (2.0 / rc) - 1.0, desc.rad_order, derivative=True)
    fc, dfc = cutoff_function(r, rc, derivative=True)
    t.mul_(dfc).add_(dt.mul_((2.0 / rc) * fc))
    rad_values = transposed(t)                                           # (E, R+1)
    cache["rad_values"] = rad_values
    cache["rad_op"], cache["rad_seg"] = _block_operator(d.center, rad_values, n)
    # angular
    basis = desc.angular_basis
    idx = torch.nonzero(r < desc.ang_cutoff).squeeze(1)
    ea = idx.shape[0]
    ra = r.index_select(0, idx)
    ua_t = u_t.index_select(1, idx)
    ca = d.center.index_select(0, idx)
    fa, dfa = cutoff_function(ra, desc.ang_cutoff, derivative=True, all_inside=True)
    sa = spin.index_select(0, idx)
    mono = transposed(basis.monomials(ua_t[0], ua_t[1], ua_t[2]).t())  # (Ea, nM)
    weights = [fa, sa * fa] if desc.multi else [fa]
    if ea:
        b = (stacked_csr(ca, n, weights) @ mono) @ basis.values_coef_t   # (k N, nY)
    else:
        b = torch.zeros(len(weights) * n, basis.n_harmonics, dtype=dtype, device=device)
    cache["B"] = [b[i * n:(i + 1) * n] for i in range(len(weights))]
    cache["ang_values"] = mono
    cache["ang_op"], cache["ang_seg"] = _block_operator(ca, mono, n)
    cache.update(ang_idx=idx, ang_center=ca, ang_spin=sa, ang_u_t=ua_t, ang_f=fa, ang_df=dfa,
                 ang_f_r=fa / ra)
    return cache


@torch.no_grad()
def _concat_caches(caches: list[dict], parts: list[DescriptorDerivatives]) -> dict:
    """Cache of the concatenation of ``parts`` from their caches."""
    n_total = sum(p.n_atoms for p in parts)
    atom_off = np.concatenate([[0], np.cumsum([p.n_atoms for p in parts])[:-1]]).tolist()
    edge_off = np.concatenate([[0], np.cumsum([p.n_edges for p in parts])[:-1]]).tolist()
    center = torch.cat([p.center + o for p, o in zip(parts, atom_off)])
    out = {
        "u_t": torch.cat([c["u_t"] for c in caches], dim=1),
        "spin": torch.cat([c["spin"] for c in caches]),
        "rad_values": torch.cat([c["rad_values"] for c in caches]),
        "ang_values": torch.cat([c["ang_values"] for c in caches]),
        "ang_idx": torch.cat([c["ang_idx"] + o for c, o in zip(caches, edge_off)]),
        "ang_center": torch.cat([c["ang_center"] + o for c, o in zip(caches, atom_off)]),
        "ang_u_t": torch.cat([c["ang_u_t"] for c in caches], dim=1),
        "B": [torch.cat([c["B"][k] for c in caches]) for k in range(len(caches[0]["B"]))],
    }
    for key in ("ang_spin", "ang_f", "ang_df", "ang_f_r"):
        out[key] = torch.cat([c[key] for c in caches])
    out["rad_op"], out["rad_seg"] = _block_operator(center, out["rad_values"], n_total)
    out["ang_op"], out["ang_seg"] = _block_operator(out["ang_center"], out["ang_values"],
                                                    n_total)
    return out
