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
stored form is three small arrays per structure (:meth:`to_arrays`).

The contraction runs on a padded *row layout* (:class:`_Rows`): each centre's
edges (they are grouped by centre) fill one or a few rows of ``k`` slots, so the
per-edge sums over Chebyshev orders and harmonic monomials are batched matrix
products (``(rows, channels, orders) @ (rows, orders, k)``) with the per-centre
weights, the centre's share of the force is a dense sum over a row, and only the
neighbour's share is a scatter (``index_add``).  Its adjoint (dE/dG of a force
loss) is the same products transposed.  Both are linear in dE/dG and are each
other's derivative (:class:`_ForceContraction`, which applies either),
so the contraction is differentiable to any order.  The geometric coefficients
(row layout, radial d/dr[T_n fc] and angular monomials per slot, harmonic sums
B per atom) are computed on first use (:meth:`DescriptorDerivatives.precompute`),
about 0.13 kB per edge in float32.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .radial import cutoff_function

__all__ = ["DescriptorDerivatives"]

#: Names of the arrays of :meth:`DescriptorDerivatives.to_arrays`.
ARRAY_NAMES = ("edge_center", "edge_neighbor", "edge_vector")


class DescriptorDerivatives:
    """Compact derivatives of the features of one structure or a batch.

    Attributes
    ----------
    descriptor : nnpflow.descriptors.ChebyshevDescriptor
        The descriptor that made them (this module does not import it: the
        descriptor imports this one).
    species_index : Tensor (N,) int64
        Species indices of the atoms (descriptor order).
    center, neighbor : Tensor (E,) int64
        Edge atoms (neighbour folded to its home-cell atom), grouped by centre.
    vector : Tensor (E, 3)
        Edge vectors in Å.
    atom_counts : list[int]
        Atoms per structure (one entry unless concatenated).
    """

    def __init__(self, descriptor, species_index: torch.Tensor,
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
        if len(counts) == 1:            # one structure: its indices are local already
            return [cls(descriptor, species, center, neighbor, vector)]
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
        The batch computes its own coefficients (one vectorised pass is cheaper
        than re-laying out the parts' cached ones)."""
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
    def from_arrays(cls, arrays: dict, species_index, descriptor
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
        (about 0.13 kB per edge in float32, 0.8 MB for a 108-atom Cu/Au cell with
        6 Å cutoff; see :meth:`cache_nbytes`); returns ``self``."""
        if self._cache is None:
            self._cache = _Geometry(self)
        return self

    def clear_cache(self) -> None:
        """Drop the coefficients of :meth:`precompute`."""
        self._cache = None

    def cache_nbytes(self) -> int:
        """Bytes held by the coefficients of :meth:`precompute` (0 if none)."""
        return 0 if self._cache is None else self._cache.nbytes()

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
        geometry = self.precompute()._cache
        w = dE_dG.to(dtype=self.dtype)
        return _ForceContraction.apply(w, geometry).t()


class _ForceContraction(torch.autograd.Function):
    """The contraction ``F^T (3, N) = C(dE/dG (N, F))`` (``adjoint=False``) or its
    adjoint ``(N, F) = C^T(g (3, N))`` (``adjoint=True``); both maps are linear and
    each other's transpose, so the backward of one is the other (any order)."""

    @staticmethod
    def forward(ctx, x, geometry, adjoint: bool = False):
        ctx.geometry, ctx.adjoint = geometry, adjoint
        return geometry.adjoint(x) if adjoint else geometry.forces_t(x)

    @staticmethod
    def backward(ctx, grad):
        return _ForceContraction.apply(grad, ctx.geometry, not ctx.adjoint), None, None


#: cost of one row of the padded layout, in slots (per-row work of the batched
#: products), used when choosing the row width
_ROW_COST = 16


def _row_width(degree: np.ndarray) -> int:
    """Row width ``k`` minimising ``rows * (k + _ROW_COST)``, where an atom with
    ``d`` edges fills ``ceil(d / k)`` rows, or exactly one row when ``k`` is the
    largest degree (every atom, even one without edges, owns its row)."""
    top = int(degree.max()) if degree.size else 0
    if top <= 1:
        return 1
    hist = np.bincount(degree)
    d = np.arange(hist.size)
    ks = np.arange(max(1, top // 4), top + 1)
    rows = (hist * -(-d // ks[:, None])).sum(axis=1)
    rows[-1] = degree.size
    return int(ks[np.argmin(rows * (ks + _ROW_COST))])


class _Rows:
    """Padded layout of edges grouped by their owner atom.

    Row ``r`` holds up to ``k`` consecutive edges of atom ``owner[r]``; slot
    ``r * k + c`` takes edge ``src[r * k + c]``.  When ``owner`` is ``None`` row
    ``r`` belongs to atom ``r`` (one row per atom).  Empty slots take edge
    ``pad_index`` (by default ``n_edges``: a sentinel appended to the edge
    arrays); ``pad`` (rows * k,) bool marks them (``None`` when there are none).
    """

    def __init__(self, owner: torch.Tensor, n_atoms: int, pad_index: int | None = None):
        device = owner.device
        n_edges = int(owner.shape[0])
        self.n_atoms = n_atoms
        if n_edges == 0:
            self.k, self.n_rows, self.pad = 1, 0, None
            self.owner = torch.zeros(0, dtype=torch.long, device=device)
            self.src = torch.zeros(0, dtype=torch.long, device=device)
            return
        degree = torch.bincount(owner, minlength=n_atoms)
        deg = degree.cpu().numpy()
        k = _row_width(deg)
        first = torch.cumsum(degree, 0) - degree
        if k >= int(deg.max()):
            self.owner = None
            count = degree
            n_rows = n_atoms
        else:
            per_atom = torch.div(degree + (k - 1), k, rounding_mode="floor")
            n_rows = int(per_atom.sum())
            self.owner = torch.repeat_interleave(torch.arange(n_atoms, device=device), per_atom,
                                                 output_size=n_rows)
            start = torch.cumsum(per_atom, 0) - per_atom
            skip = (torch.arange(n_rows, device=device) - start.index_select(0, self.owner)) * k
            first = first.index_select(0, self.owner) + skip
            count = (degree.index_select(0, self.owner) - skip).clamp_(max=k)
        col = torch.arange(k, device=device)
        empty = col >= count.unsqueeze(1)                               # (rows, k)
        src = first.unsqueeze(1) + col
        self.k, self.n_rows = k, n_rows
        if int(count.sum()) < n_rows * k:
            self.src = src.masked_fill_(empty, n_edges if pad_index is None else pad_index
                                        ).view(-1)
            self.pad = empty.view(-1)
        else:
            self.src = src.view(-1)
            self.pad = None

    @property
    def n_slots(self) -> int:
        return self.n_rows * self.k

    def to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Per-atom ``x`` (N, ...) -> per-row (rows, ...)."""
        return x if self.owner is None else x.index_select(0, self.owner)

    def from_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row ``x`` (rows, ...) -> summed per atom (N, ...)."""
        if self.owner is None:
            return x
        return x.new_zeros((self.n_atoms,) + tuple(x.shape[1:])).index_add_(0, self.owner, x)

    def to_rows_t(self, x: torch.Tensor) -> torch.Tensor:
        """(C, N) -> (C, rows)."""
        return x if self.owner is None else x.index_select(1, self.owner)

    def from_rows_t(self, x: torch.Tensor) -> torch.Tensor:
        """(C, rows) -> summed per atom (C, N)."""
        if self.owner is None:
            return x
        return x.new_zeros((x.shape[0], self.n_atoms)).index_add_(1, self.owner, x)


def _radial_derivatives(r: torch.Tensor, descriptor, out: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """d/dr [T_n(2r/Rc - 1) fc(r)] for n = 0..R, shape (R + 1, S), zero at
    r >= Rc (1/Å), written into ``out`` when given.  With P_n = T_n fc and
    x = 2r/Rc - 1: P_{n+1} = 2x P_n - P_{n-1} and D_{n+1} = 2x D_n - D_{n-1} + (4/Rc) P_n."""
    rc = descriptor.rad_cutoff
    order = descriptor.rad_order
    fc, dfc = cutoff_function(r, rc, derivative=True, all_inside=True)
    outside = r >= rc
    fc.masked_fill_(outside, 0.0)
    dfc.masked_fill_(outside, 0.0)
    if out is None:
        out = torch.empty(order + 1, r.shape[0], dtype=r.dtype, device=r.device)
    out[0] = dfc
    if order == 0:
        return out
    x2 = r * (4.0 / rc)
    x2.sub_(2.0)                                                         # 2x
    torch.mul(x2, dfc, out=out[1])
    out[1].mul_(0.5).add_(fc, alpha=2.0 / rc)
    p_prev, p = fc, x2 * fc
    p.mul_(0.5)                                                          # P_1 = x fc
    spare = torch.empty_like(p) if order > 2 else None   # P_{n+1} goes here, then rotate
    for n in range(1, order):
        nxt = out[n + 1]
        torch.mul(x2, out[n], out=nxt)
        nxt.sub_(out[n - 1]).add_(p, alpha=4.0 / rc)
        if n + 1 < order:
            p_next = torch.mul(x2, p, out=spare)
            spare = p_prev                                 # P_{n-1}: free after this step
            p_prev, p = p, p_next.sub_(p_prev)
    return out


def _edge_components(vector: torch.Tensor, far: float,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Edge vectors (E, 3) as components (3, E + 1) with a sentinel edge
    ``(far, 0, 0)`` appended (the source of empty slots); into ``out`` when given."""
    e = vector.shape[0]
    if vector.device.type == "cpu" and not vector.requires_grad:
        arr = (np.empty((3, e + 1), dtype=torch.empty(0, dtype=vector.dtype).numpy().dtype)
               if out is None else out.numpy())
        arr[:, :e] = vector.numpy().T                    # numpy's blocked transpose
        arr[:, e] = (far, 0.0, 0.0)
        return torch.from_numpy(arr) if out is None else out
    if out is None:
        out = vector.new_zeros(3, e + 1)
    else:
        out.zero_()
    out[:, :e] = vector.t()
    out[0, e] = far
    return out


def _dot3(a, b) -> torch.Tensor:
    """Sum over the leading axis of length 3 of ``a * b``."""
    out = a[0] * b[0]
    out.addcmul_(a[1], b[1]).addcmul_(a[2], b[2])
    return out


class _Geometry:
    """Geometric coefficients of :meth:`DescriptorDerivatives.forces` on the
    padded row layouts of all edges (radial) and of the edges within the
    angular cutoff (angular).

    Radial (``rad`` layout, S slots): ``rad_D`` (R+1, S) d/dr[T_n fc]; ``rad_u``
    (3, S) unit vectors; ``rad_neighbor`` (S,); ``rad_spin`` (S,) neighbour
    typespins.  Angular (``ang`` layout, Sa slots): ``ang_mono`` (nM, Sa)
    monomials of the unit vectors ``ang_u`` (3, Sa); ``ang_neighbor``,
    ``ang_spin``, ``ang_spin2`` (s^2); ``ang_df`` dfc/dr, ``ang_f_r`` fc / r,
    ``ang_ffd`` fc dfc/dr; ``B`` (N, C, nY) harmonic sums (unweighted and, for
    several species, typespin-weighted).  Empty slots have zero coefficients.
    """

    def __init__(self, d: DescriptorDerivatives):
        desc = d.descriptor
        self.descriptor = desc
        self.multi = desc.multi
        n = self.n_atoms = d.n_atoms
        far = 2.0 * desc.neighbor_cutoff + 1.0          # distance given to empty slots
        spin_atom = (desc.typespin.index_select(0, d.species_index) if self.multi else None)
        # radial: all edges; empty slots take a sentinel edge (far, 0, 0) -> atom 0
        # the large per-slot arrays come from the descriptor's workspace: scratch for
        # the edge components, lent (for this object's lifetime) for the kept ones
        ws = desc.workspace
        dt, dev = d.vector.dtype, d.vector.device
        rad = self.rad = _Rows(d.center, n)
        comps = _edge_components(d.vector, far,
                                 out=ws.take("edge_xyz", (3, d.n_edges + 1), dt, dev))
        xyz = torch.index_select(comps, 1, rad.src,
                                 out=ws.lend("rad_u", (3, rad.n_slots), dt, dev, self))  # (3, S)
        r = _dot3(xyz, xyz).sqrt_()
        self.rad_u = xyz.div_(r)
        self.rad_neighbor = torch.cat((d.neighbor, d.neighbor.new_zeros(1))).index_select(
            0, rad.src) if rad.pad is not None else d.neighbor.index_select(0, rad.src)
        self.rad_spin = (spin_atom.index_select(0, self.rad_neighbor) if self.multi else None)
        self.rad_D = _radial_derivatives(
            r, desc, out=ws.lend("rad_D", (desc.n_rad, rad.n_slots), dt, dev, self))
        # angular: slots within the angular cutoff, still grouped by centre
        sel = torch.nonzero(r < desc.ang_cutoff).squeeze(1)
        row = torch.div(sel, rad.k, rounding_mode="floor")
        ang = self.ang = _Rows(row if rad.owner is None else rad.owner.index_select(0, row), n,
                               pad_index=0)
        slot = sel.index_select(0, ang.src)
        ra = r.index_select(0, slot)
        if ang.pad is not None:
            ra.masked_fill_(ang.pad, far)
        ua = self.ang_u = self.rad_u.index_select(1, slot)
        self.ang_neighbor = self.rad_neighbor.index_select(0, slot)
        fa, dfa = cutoff_function(ra, desc.ang_cutoff, derivative=True, all_inside=True)
        if ang.pad is not None:
            fa.masked_fill_(ang.pad, 0.0)
            dfa.masked_fill_(ang.pad, 0.0)
        self.ang_df = dfa
        self.ang_f_r = fa / ra
        self.ang_ffd = fa * dfa
        basis = desc.angular_basis
        self.ang_mono = basis.monomials(
            ua[0], ua[1], ua[2],
            out=ws.lend("ang_mono", (basis.n_monomials, ang.n_slots), dt, dev, self)
        ).t()                                                            # (nM, Sa)
        if self.multi:
            sa = self.ang_spin = self.rad_spin.index_select(0, slot)
            self.ang_spin2 = sa * sa
            weights = torch.stack((fa, sa * fa))
        else:
            self.ang_spin = self.ang_spin2 = None
            weights = fa.unsqueeze(0)
        rows, k = ang.n_rows, ang.k
        b_rows = torch.matmul(weights.view(weights.shape[0], rows, k).transpose(0, 1),
                              self.ang_mono.view(basis.n_monomials, rows, k).permute(1, 2, 0))
        self.B = ang.from_rows(b_rows) @ basis.values_coef_t              # (N, C, nY)

    def nbytes(self) -> int:
        seen: dict[int, int] = {}
        for value in self.__dict__.values():
            tensors = [value] if isinstance(value, torch.Tensor) else (
                [getattr(value, a) for a in ("owner", "src", "pad")]
                if isinstance(value, _Rows) else [])
            for t in tensors:
                if isinstance(t, torch.Tensor):
                    seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return int(sum(seen.values()))

    # ------------------------------------------------------------ forward
    def forces_t(self, w: torch.Tensor) -> torch.Tensor:
        """Forces transposed, (3, N) eV/Å, for ``w`` = dE/dG (N, F)."""
        desc = self.descriptor
        n = self.n_atoms
        sl = desc.feature_slices()
        rad = self.rad
        rows, k = rad.n_rows, rad.k
        # radial: rho = sum_n (w_n + s_j w'_n) D_n per slot; dE/dv = rho u
        # scratch of the per-slot temporaries (not part of the result)
        ws, dt, dev = desc.workspace, w.dtype, w.device
        x = (torch.stack((w[:, sl["radial"]], w[:, sl["weighted_radial"]]), 1) if self.multi
             else w[:, sl["radial"]].unsqueeze(1))                       # (N, C, R+1)
        o = torch.matmul(rad.to_rows(x),
                         self.rad_D.view(desc.n_rad, rows, k).permute(1, 0, 2),
                         out=ws.take("ft_o", (rows, x.shape[1], k), dt, dev))  # (rows, C, k)
        rho = torch.addcmul(o[:, 0], self.rad_spin.view(rows, k), o[:, 1],
                            out=ws.take("ft_rho", (rows, k), dt, dev)) if self.multi \
            else o[:, 0]
        gv = torch.mul(self.rad_u.view(3, rows, k), rho,
                       out=ws.take("ft_gv", (3, rows, k), dt, dev))      # (3, rows, k)
        centre = rad.from_rows_t(gv.sum(2))                              # (3, N)
        # (index_add_ with alpha=-1 takes a slow path: subtract the sum instead)
        neighbour = w.new_zeros(3, n).index_add_(1, self.rad_neighbor, gv.view(3, -1))
        ang = self.ang
        if ang.n_rows:
            rows, k = ang.n_rows, ang.k
            basis = desc.angular_basis
            nm = basis.n_monomials
            xa = (torch.stack((w[:, sl["angular"]], w[:, sl["weighted_angular"]]), 1)
                  if self.multi else w[:, sl["angular"]].unsqueeze(1))   # (N, C, A+1)
            lam = xa @ basis.cheb_leg                                    # (N, C, L+1)
            beta = lam.index_select(2, basis.l_of) * self.B              # (N, C, nY)
            gam = (beta @ basis.monomial_weights).view(n, -1, nm)        # (N, 4C, nM)
            sig2 = lam.sum(2).neg_()                                     # 2 sigma (N, C)
            o = torch.matmul(ang.to_rows(gam), self.ang_mono.view(nm, rows, k).permute(1, 0, 2),
                             out=ws.take("ft_oa", (rows, gam.shape[1], k), dt, dev))  # (rows, 4C, k)
            sg = ang.to_rows(sig2)
            if self.multi:
                hg = torch.addcmul(o[:, :4], self.ang_spin.view(rows, 1, k), o[:, 4:])
                sgm = torch.addcmul(sg[:, :1], self.ang_spin2.view(rows, k), sg[:, 1:2])
            else:
                hg, sgm = o, sg
            u = self.ang_u.view(3, rows, k)
            fr = self.ang_f_r.view(rows, k)
            g = hg[:, 1:].transpose(0, 1)                                # (3, rows, k)
            coef = self.ang_df.view(rows, k) * hg[:, 0]
            coef.addcmul_(sgm, self.ang_ffd.view(rows, k))
            coef.addcmul_(fr, _dot3(g, u), value=-1.0)
            gv = u * coef
            gv.addcmul_(g, fr)
            centre = centre + ang.from_rows_t(gv.sum(2))
            neighbour.index_add_(1, self.ang_neighbor, gv.view(3, -1))
        return centre - neighbour

    # ------------------------------------------------------------ adjoint
    def adjoint(self, grad_t: torch.Tensor) -> torch.Tensor:
        """dE/dG-shaped (N, F) gradient for the gradient ``grad_t`` (3, N) of the
        transposed forces (the transpose of :meth:`forces_t`)."""
        desc = self.descriptor
        n = self.n_atoms
        g_t = grad_t.contiguous()
        rad = self.rad
        rows, k = rad.n_rows, rad.k
        # d loss / dv per slot: g_centre - g_neighbour
        gg = rad.to_rows_t(g_t).unsqueeze(2) - g_t.index_select(1, self.rad_neighbor).view(
            3, rows, k)
        c = 2 if self.multi else 1
        u = self.rad_u.view(3, rows, k)
        grho = g_t.new_empty(rows, c, k)                                 # (rows, C, k)
        torch.mul(gg[0], u[0], out=grho[:, 0])
        grho[:, 0].addcmul_(gg[1], u[1]).addcmul_(gg[2], u[2])
        if self.multi:
            torch.mul(grho[:, 0], self.rad_spin.view(rows, k), out=grho[:, 1])
        gx = rad.from_rows(torch.matmul(
            grho, self.rad_D.view(desc.n_rad, rows, k).permute(1, 2, 0)))        # (N, C, R+1)
        ang = self.ang
        basis = desc.angular_basis
        if ang.n_rows:
            rows, k = ang.n_rows, ang.k
            nm = basis.n_monomials
            u = self.ang_u.view(3, rows, k)
            gg = ang.to_rows_t(g_t).unsqueeze(2) - g_t.index_select(1, self.ang_neighbor).view(
                3, rows, k)
            gcoef = _dot3(gg, u)                                         # (rows, k)
            # d loss / d[h, g] per slot, then the typespin-weighted copy: (rows, 4C, k)
            ghg = g_t.new_empty(rows, 4 * c, k)
            torch.mul(self.ang_df.view(rows, k), gcoef, out=ghg[:, 0])
            gvec = ghg[:, 1:4].transpose(0, 1)                           # (3, rows, k) view
            torch.addcmul(gg, u, gcoef, value=-1.0, out=gvec)
            gvec.mul_(self.ang_f_r.view(rows, k))
            gsgm = self.ang_ffd.view(rows, k) * gcoef
            if self.multi:
                torch.mul(ghg[:, :4], self.ang_spin.view(rows, 1, k), out=ghg[:, 4:])
                gsg = torch.stack((gsgm.sum(1), (gsgm * self.ang_spin2.view(rows, k)).sum(1)), 1)
            else:
                gsg = gsgm.sum(1, keepdim=True)                          # (rows, C)
            ggam = ang.from_rows(torch.matmul(
                ghg, self.ang_mono.view(nm, rows, k).permute(1, 2, 0)))  # (N, 4C, nM)
            gbeta = ggam.view(n, c, -1) @ basis.monomial_weights.t()     # (N, C, nY)
            glam = (gbeta * self.B) @ basis.degree_matrix                # (N, C, L+1)
            glam.sub_(ang.from_rows(gsg).unsqueeze(2))
            gxa = glam @ basis.cheb_leg.t()                              # (N, C, A+1)
        else:
            gxa = g_t.new_zeros(n, c, desc.n_ang)
        blocks = [gx[:, 0], gxa[:, 0]]
        if self.multi:
            blocks += [gx[:, 1], gxa[:, 1]]
        return torch.cat(blocks, 1)
