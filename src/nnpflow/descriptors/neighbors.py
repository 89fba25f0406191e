"""Vectorised periodic neighbour lists in torch, for one or many structures.

All pairs ``(i, j, S)`` with ``|r_j - r_i + S @ cell| <= cutoff`` are found, where
``S`` is an integer image offset (periodic directions only), including the images
of the centre atom itself (``i == j`` with ``S != 0``), for cells of any shape and
for cells smaller than twice (or than once) the cutoff.  Structures without a
periodic direction have no images.  Results refer to the positions as given:
atoms outside the home cell give the same pairs and (to rounding) the same
vectors as the wrapped structure.  No compiled extensions, no Python loops over
atoms or structures.

Image offsets per pair.  Along lattice direction a an image is within the
cutoff only if its fractional displacement satisfies ``|f_a| <= bound_a =
cutoff / h_a`` (h_a: perpendicular cell height).  With ``df`` the fractional
separation of the two atoms, ``lo_a = -floor(df_a + bound_a)`` is the first
admissible offset and ``lo_a + c_a``, ``0 <= c_a <= floor(2 bound_a)``, are all
of them; every image is examined exactly once.

Two searches (``method``):

* ``dense`` (structures up to ``DENSE_MAX_ATOMS`` atoms, padded to the largest
  of a batch): all atom pairs by broadcasting, one (B, n, n) slab of squared
  distances per reachable offset combination ``c`` (|v + c @ cell|^2 from |v|^2
  and v . A_a), one ``nonzero``; combinations that cannot reach the cutoff sphere
  for any structure of the batch are skipped (a Gram-eigenvalue bound).
* ``binned`` (larger structures): cell lists.  Atoms are wrapped into the home
  cell and binned along the lattice directions (bins wider than the cutoff;
  non-periodic directions over the atoms' extent); candidate pairs come from the
  <= 27 distinct neighbouring bins, then their admissible offsets are expanded
  and tested.

Edges come out grouped by centre atom in increasing order (the descriptor's
segment sums rely on it).  Units: positions, cells, cutoffs, vectors and
distances in Å.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["NeighborList", "neighbor_list", "batch_neighbor_list", "pair_search", "image_reach"]

# Relative safety margins.  Bins are made a little wider than the cutoff and the
# image-offset bounds a little looser, so rounding can only add candidates (which
# the exact distance test then removes), never lose pairs.
_BIN_MARGIN = 1e-6
_BOUND_MARGIN = 1e-6


@dataclass
class NeighborList:
    """Directed neighbour pairs (edges), grouped by centre atom in increasing order.

    Attributes
    ----------
    center : Tensor (E,) int64
        Index of the centre atom ``i``.
    neighbor : Tensor (E,) int64
        Index of the neighbour atom ``j`` in the home cell (periodic images are
        folded onto their atom).
    shift : Tensor (E, 3) int64
        Integer image offsets ``S`` along the cell vectors.
    vector : Tensor (E, 3)
        ``positions[neighbor] - positions[center] + shift @ cell`` in Å.
    distance : Tensor (E,)
        ``|vector|`` in Å.

    For a batch of structures the indices refer to the concatenated atoms.
    """

    center: torch.Tensor
    neighbor: torch.Tensor
    shift: torch.Tensor
    vector: torch.Tensor
    distance: torch.Tensor

    def __len__(self) -> int:
        return int(self.center.shape[0])

    def select(self, index: torch.Tensor) -> "NeighborList":
        """The edges ``index`` (a boolean mask or integer indices), order kept."""
        return NeighborList(self.center[index], self.neighbor[index], self.shift[index],
                            self.vector[index], self.distance[index])


def _as_tensor(value, dtype, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(value), dtype=dtype, device=device)


def neighbor_list(positions, cell, pbc, cutoff: float) -> NeighborList:
    """All pairs within ``cutoff`` (Å) of one structure.

    Parameters
    ----------
    positions : Tensor or array (N, 3)
        Cartesian positions in Å (any values; atoms outside the home cell are fine).
    cell : Tensor or array (3, 3) or None
        Lattice vectors as rows (Å); ``None`` for an isolated structure.
    pbc : Tensor or array (3,) bool, or None
        Periodicity per lattice vector; ``None`` means periodic along all three
        when a cell is given, else isolated.
    cutoff : float
        Cutoff radius in Å; pairs with distance <= cutoff are returned.

    Returns
    -------
    NeighborList
        Edges grouped by centre; ``i == j`` appears only with a non-zero shift.
    """
    pos = positions if isinstance(positions, torch.Tensor) else torch.as_tensor(
        np.asarray(positions, dtype=np.float64))
    if not pos.is_floating_point():
        pos = pos.to(torch.float64)
    pos = pos.reshape(-1, 3)
    dtype, device = pos.dtype, pos.device
    if cell is None:
        cells = torch.eye(3, dtype=dtype, device=device).unsqueeze(0)
        pbcs = torch.zeros(1, 3, dtype=torch.bool, device=device)
    else:
        cells = _as_tensor(cell, dtype, device).reshape(1, 3, 3)
        if pbc is None:
            pbcs = torch.ones(1, 3, dtype=torch.bool, device=device)
        else:
            p = _as_tensor(pbc, torch.bool, device).reshape(-1)
            pbcs = (p.expand(3) if p.numel() == 1 else p).reshape(1, 3)
    counts = torch.tensor([pos.shape[0]], dtype=torch.long, device=device)
    return batch_neighbor_list(pos, cells, pbcs, counts, cutoff)


def _excl_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0) - x


#: Structures up to this many atoms use the dense (padded all-pairs) search; larger
#: ones use cell lists.  Both are exact; the switch is about speed (one core:
#: dense is faster up to ~2000 atoms) and memory (dense grids grow as n^2).
DENSE_MAX_ATOMS = 1024


def batch_neighbor_list(positions: torch.Tensor, cells: torch.Tensor, pbcs: torch.Tensor,
                        counts: torch.Tensor, cutoff: float,
                        method: str = "auto") -> NeighborList:
    """Neighbour lists of many structures in one vectorised pass.

    Parameters
    ----------
    positions : Tensor (N, 3)
        Concatenated positions (Å) of all structures, structure after structure.
    cells : Tensor (B, 3, 3)
        Lattice vectors as rows (Å).  Ignored (may be anything) for structures
        without a periodic direction.
    pbcs : Tensor (B, 3) bool
        Periodicity per structure and lattice vector.
    counts : Tensor (B,) int64
        Atoms per structure (on the positions' device).
    cutoff : float
        Cutoff radius in Å.
    method : {"auto", "dense", "binned"}
        ``"dense"`` tests all atom pairs of each structure (padded to the largest
        structure; fast for small cells), ``"binned"`` uses cell lists (for large
        structures); ``"auto"`` picks dense when no structure has more than
        ``DENSE_MAX_ATOMS`` atoms.  All give the same pairs.

    Returns
    -------
    NeighborList
        Indices into the concatenated atoms; edges grouped by centre in
        increasing order (hence also by structure).
    """
    ci, cj, shift, vec, dist = pair_search(positions, cells, pbcs, counts, cutoff, method)
    return NeighborList(ci, cj, shift, torch.stack(vec, dim=1), dist)


@torch.no_grad()
def pair_search(positions: torch.Tensor, cells: torch.Tensor, pbcs: torch.Tensor,
                counts: torch.Tensor, cutoff: float, method: str = "auto",
                with_shift: bool = True, workspace=None):
    """The work of :func:`batch_neighbor_list`, returning
    ``(center, neighbor, shift or None, [vx, vy, vz], distance)``; with
    ``with_shift=False`` the image offsets may be skipped (``None``).
    ``workspace`` (a :class:`~nnpflow.descriptors.workspace.Workspace`) lends
    the dense search its large temporaries, kept for the next call."""
    cutoff = float(cutoff)
    if not cutoff > 0:
        raise ValueError(f"neighbour cutoff must be positive, got {cutoff}")
    if method not in ("auto", "dense", "binned"):
        raise ValueError(f"unknown neighbour-list method {method!r}")
    device, dtype = positions.device, positions.dtype
    n_struct = cells.shape[0]
    n_atoms = positions.shape[0]
    if n_atoms == 0:
        empty_l = torch.zeros(0, dtype=torch.long, device=device)
        empty_f = torch.zeros(0, dtype=dtype, device=device)
        return (empty_l, empty_l, torch.zeros(0, 3, dtype=torch.long, device=device),
                [empty_f, empty_f, empty_f], empty_f)
    geo = _Geometry(cells, pbcs, cutoff)
    cells = geo.cells
    sid = torch.repeat_interleave(torch.arange(n_struct, device=device), counts,
                                  output_size=n_atoms)
    counts_np = counts.cpu().numpy() if counts.device.type != "cpu" else counts.numpy()
    if method == "auto":
        method = "dense" if int(counts_np.max()) <= DENSE_MAX_ATOMS else "binned"
    if method == "dense":
        ci, cj, s0, s1, s2, vec = _dense_pairs(positions, geo, counts, int(counts_np.max()),
                                               sid, cutoff, with_shift, workspace)
    else:
        ci, cj, s0, s1, s2 = _binned_pairs(positions, cells, geo.inv, geo.pbcs, counts, sid,
                                           geo.heights, geo.bound, cutoff)
        vec = None
    if vec is None:
        # vectors by the contract formula positions[j] - positions[i] + shift @ cell
        image = _image_vectors(cells, sid.index_select(0, ci), s0, s1, s2)
        vec = []
        for a in range(3):
            pa = positions[:, a].contiguous()
            vec.append(pa.index_select(0, cj) - pa.index_select(0, ci) + image[a])
    dist = vec[0] * vec[0]
    dist.addcmul_(vec[1], vec[1]).addcmul_(vec[2], vec[2]).sqrt_()
    shift = torch.stack((s0, s1, s2), dim=1).to(torch.long) if s0 is not None else None
    return ci, cj, shift, vec, dist


def image_reach(cell, pbc, cutoff: float) -> tuple[int, int, int]:
    """How many further periodic images per lattice direction the dense search
    examines for one structure (0 for non-periodic directions); structures with
    equal values batch well together.  ``cell`` (3, 3) Å or None."""
    if cell is None or not np.any(pbc):
        return (0, 0, 0)
    heights = 1.0 / np.linalg.norm(np.linalg.inv(np.asarray(cell, dtype=float)), axis=0)
    reach = np.floor(2.0 * cutoff * (1.0 + _BOUND_MARGIN) / heights).astype(int)
    return tuple(int(r) if p else 0 for r, p in zip(reach, np.asarray(pbc, dtype=bool)))


class _Geometry:
    """Per-structure cell data of a batch, computed once on the host (numpy,
    float64) and handed to the device: cells (identity for structures without a
    periodic direction), inverse cells, perpendicular heights (Å) and the
    fractional image bounds ``cutoff / height`` per lattice direction."""

    def __init__(self, cells: torch.Tensor, pbcs: torch.Tensor, cutoff: float):
        device, dtype = cells.device, cells.dtype
        c = cells.detach().to("cpu", torch.float64).numpy()
        p = pbcs.detach().to("cpu").numpy().astype(bool)
        periodic = p.any(axis=1)
        c = np.where(periodic[:, None, None], c, np.eye(3))
        det = np.abs(np.linalg.det(c))
        if not np.all(np.isfinite(c)) or np.any(det < 1e-8):
            bad = int(np.argmax(~np.isfinite(det) | (det < 1e-8)))
            raise ValueError(f"structure {bad} of the batch has a singular or non-finite "
                             f"periodic cell")
        inv = np.linalg.inv(c)
        heights = 1.0 / np.linalg.norm(inv, axis=1)              # (B, 3) Å
        self.np_cells, self.np_pbc = c, p
        self.np_bound = (cutoff * (1.0 + _BOUND_MARGIN)) / heights
        self.cutoff = cutoff

        def dev(x, dt=dtype):
            return torch.as_tensor(x, dtype=dt).to(device)

        self.cells = dev(c)
        self.inv = dev(inv)
        self.heights = dev(heights)
        self.bound = dev(self.np_bound)
        self.pbcs = dev(p, torch.bool)
        self.all_periodic = bool(p.all())

    def dense_plan(self):
        """Image offset combinations for the dense search (see
        :func:`_dense_pairs`): ``(combos (C, 3) ints, const (B, C), self_combo
        (B, C) bool)`` as numpy arrays; combination 0 is (0, 0, 0)."""
        bound, p, c = self.np_bound, self.np_pbc, self.np_cells
        reach = np.where(p, np.floor(2.0 * bound), 0).astype(int)      # (B, 3) max offset
        kmax = reach.max(axis=0)
        grid = np.indices(kmax + 1).reshape(3, -1).T                  # (C0, 3), (0,0,0) first
        ok = (grid[None, :, :] <= reach[:, None, :]).all(axis=2)         # (B, C0)
        ok &= _reachable(c, bound, grid, self.cutoff)
        used = ok.any(axis=0)
        used[0] = True
        keep = np.flatnonzero(used)
        combos = grid[keep]
        img = np.einsum("ca,bak->bck", combos.astype(float), c)          # (B, C, 3)
        const = np.where(ok[:, keep], (img * img).sum(axis=2), np.inf)   # (B, C)
        first = np.where(p, np.floor(bound), 0).astype(int)              # offsets of i's own 0
        self_combo = (combos[None, :, :] == first[:, None, :]).all(axis=2)
        return combos, const, self_combo


def _image_vectors(cells: torch.Tensor, struct: torch.Tensor, s0, s1, s2):
    """``S @ cell[struct]`` per edge as three component tensors.

    Uses a small table of all offsets in the bounding box of ``S`` per structure
    (a few gathers instead of per-edge 3x3 products); falls back to a batched
    product when that box is large (atoms very far outside the home cell).
    """
    dtype, device = cells.dtype, cells.device
    n_edges = s0.shape[0]
    if n_edges == 0:
        z = torch.zeros(0, dtype=dtype, device=device)
        return z, z, z
    smin = torch.stack((s0.min(), s1.min(), s2.min()))
    smax = torch.stack((s0.max(), s1.max(), s2.max()))
    lo = smin.to(torch.long).tolist()
    n = ((smax - smin).to(torch.long) + 1).tolist()
    n_rows = n[0] * n[1] * n[2]
    if n_rows * cells.shape[0] > max(4096, n_edges):
        s = torch.stack((s0, s1, s2), dim=1).to(dtype).unsqueeze(1)
        v = torch.bmm(s, cells.index_select(0, struct)).squeeze(1)
        return v[:, 0], v[:, 1], v[:, 2]
    r = [torch.arange(lo[a], lo[a] + n[a], device=device, dtype=dtype) for a in range(3)]
    grid = torch.stack(torch.meshgrid(*r, indexing="ij"), dim=-1).reshape(-1, 3)  # (L, 3)
    table = torch.matmul(grid.unsqueeze(0), cells).reshape(-1, 3)              # (B*L, 3)
    code = ((s0 - float(lo[0])) * float(n[1]) + (s1 - float(lo[1]))) * float(n[2]) \
        + (s2 - float(lo[2]))
    code = code.to(torch.long) + struct * n_rows
    return tuple(table[:, a].contiguous().index_select(0, code) for a in range(3))


def _expand_images(ci, cj, lo, span, df, cells_of, cutoff):
    """All image offsets of the given pairs within their per-direction ranges.

    ``lo`` and ``span`` are three (P,) float tensors (first offset and number of
    offsets per direction), ``df`` the three fractional separations; returns the
    candidates within the cutoff as ``(ci, cj, s0, s1, s2)``.  ``cells_of`` maps
    pair indices to (K, 9) rows of the cell matrices.
    """
    device, dtype = df[0].device, df[0].dtype
    n_img = torch.clamp((span[0] * span[1] * span[2]).to(torch.long), min=0)
    n_cand = int(n_img.sum())
    q = torch.repeat_interleave(torch.arange(n_img.shape[0], device=device), n_img,
                                output_size=n_cand)
    kk = (torch.arange(n_cand, device=device) - _excl_cumsum(n_img).index_select(0, q)).to(dtype)
    sp1 = span[1].index_select(0, q)
    sp2 = span[2].index_select(0, q)
    t = torch.floor(kk / sp2)
    s2 = kk - t * sp2 + lo[2].index_select(0, q)
    s0 = torch.floor(t / sp1)
    s1 = t - s0 * sp1 + lo[1].index_select(0, q)
    s0 = s0 + lo[0].index_select(0, q)
    ci = ci.index_select(0, q)
    cj = cj.index_select(0, q)
    cell_c = cells_of(q)                                         # (K, 9)
    f = [df[0].index_select(0, q) + s0, df[1].index_select(0, q) + s1,
         df[2].index_select(0, q) + s2]
    d2 = None
    for a in range(3):
        v = f[0] * cell_c[:, a] + f[1] * cell_c[:, 3 + a] + f[2] * cell_c[:, 6 + a]
        d2 = v * v if d2 is None else d2 + v * v
    keep = (d2 <= cutoff * cutoff) & ((ci != cj) | (s0 != 0) | (s1 != 0) | (s2 != 0))
    idx = torch.nonzero(keep).squeeze(1)
    return (ci.index_select(0, idx), cj.index_select(0, idx), s0.index_select(0, idx),
            s1.index_select(0, idx), s2.index_select(0, idx))


def _dense_pairs(positions, geo: _Geometry, counts, n, sid, cutoff, with_shift=True,
                 workspace=None):
    """All pairs of each structure, padded to the largest one (``n`` atoms), by
    broadcasting.

    For every pair and periodic direction the first admissible image offset
    ``lo = -floor(df + bound)`` is taken (``df``: fractional separation of the
    positions as given), i.e. the fractional displacement ``vf = df + lo`` in
    [-bound, 1 - bound); the admissible images are ``lo + c`` with
    ``0 <= c_a <= floor(2 bound_a)``.  Their squared distances
    ``|v + c @ cell|^2 = |v|^2 + sum_a c_a 2 v . A_a + |c @ cell|^2`` are evaluated
    densely, one (B, n, n) slab per reachable combination ``c`` (no gathers),
    and the edges come out of one ``nonzero`` already grouped by centre.

    Returns ``(ci, cj, s0, s1, s2, vec)``, grouped by centre; ``vec`` holds the
    three vector components ``(vf + c) @ cell`` (= positions[j] - positions[i] +
    shift @ cell up to rounding).  Without ``with_shift`` the shifts are
    ``None``.  The (B, 3, n, n) and (B, n, n) temporaries come from ``workspace``
    when one is given.
    """
    device, dtype = positions.device, positions.dtype

    def scratch(name, shape, dt=dtype):
        if workspace is None:
            return torch.empty(shape, dtype=dt, device=device)
        return workspace.take(name, shape, dt, device)

    cells, inv, bound, pbcs = geo.cells, geo.inv, geo.bound, geo.pbcs
    n_struct = cells.shape[0]
    nn = n * n
    inf = float("inf")
    combos, const, self_combo = geo.dense_plan()
    n_comb = len(combos)
    start = _excl_cumsum(counts)
    local = torch.arange(positions.shape[0], device=device) - start.index_select(0, sid)
    P = torch.zeros(n_struct * n, 3, dtype=dtype, device=device)
    P.index_copy_(0, sid * n + local, positions)
    F = torch.bmm(P.view(n_struct, n, 3), inv).transpose(1, 2).contiguous()   # (B, 3, n)
    bnd = torch.where(pbcs, bound, torch.zeros_like(bound))[:, :, None, None]
    slab4 = (n_struct, 3, n, n)
    vf = torch.sub(F.unsqueeze(2), F.unsqueeze(3), out=scratch("vf", slab4))  # f_j - f_i
    fl = torch.add(vf, bnd, out=scratch("fl", slab4)).floor_()   # -lo
    if not geo.all_periodic:
        fl.mul_(pbcs.to(dtype)[:, :, None, None])
    vf.sub_(fl)
    del fl                                                       # its memory serves v below
    v = torch.bmm(cells.transpose(1, 2), vf.view(n_struct, 3, nn),
                  out=scratch("fl", (n_struct, 3, nn)))          # (B, 3, n*n) Å
    d2 = torch.mul(v[:, 0], v[:, 0], out=scratch("d2", (n_struct, nn)))
    d2.addcmul_(v[:, 1], v[:, 1]).addcmul_(v[:, 2], v[:, 2])       # (B, n*n)
    d2v = d2.view(n_struct, n, n)
    pad = None
    if int(counts.min()) < n:
        pad = torch.arange(n, device=device).unsqueeze(0) >= counts.unsqueeze(1)  # (B, n)
        d2v.masked_fill_(pad.unsqueeze(2) | pad.unsqueeze(1), inf)
    # Candidate images: a boolean mask "within cutoff" laid out (B, n_i, C, n_j),
    # one slab per combination, so that nonzero lists edges grouped by centre.
    cut2 = cutoff * cutoff
    within = scratch("within", (n_struct, n, n_comb, n), torch.bool)
    dirs = [a for a in range(3) if combos[:, a].max() > 0]
    u = {}
    for a in dirs:                                               # 2 v . A_a per pair
        A2 = 2.0 * cells[:, a]                                   # (B, 3)
        ua = torch.mul(v[:, 0], A2[:, 0:1], out=scratch(f"u{a}", (n_struct, nn)))
        u[a] = ua.addcmul_(v[:, 1], A2[:, 1:2]).addcmul_(v[:, 2], A2[:, 2:3]).view(n_struct, n, n)
    const_t = torch.as_tensor(const, dtype=dtype).to(device)
    self_t = torch.as_tensor(self_combo).to(device)
    self_any = self_combo.any(axis=0)
    buf = scratch("slab", tuple(d2v.shape)) if n_comb > 1 else None
    for c in range(n_comb):
        if c == 0:
            slab = d2v                                           # const is 0 for c = 0
        else:
            slab = buf
            first = True
            for a in dirs:
                k = int(combos[c, a])
                if k:
                    if first:
                        torch.add(d2v, u[a], alpha=k, out=slab)
                        first = False
                    else:
                        slab.add_(u[a], alpha=k)
            slab.add_(const_t[:, c, None, None])
        if self_any[c]:                                          # i's own zero offset
            saved = slab.diagonal(dim1=1, dim2=2).clone() if c == 0 else None
            slab.diagonal(dim1=1, dim2=2).masked_fill_(self_t[:, c, None], inf)
        torch.le(slab, cut2, out=within[:, :, c])
        if c == 0 and self_any[c]:
            d2v.diagonal(dim1=1, dim2=2).copy_(saved)            # later slabs need it
    found = (torch.nonzero(within) if workspace is None else
             torch.nonzero(within, out=workspace.resizable("pairs", torch.long, device)))
    b, i, comb, j = found.unbind(1)
    base = start.index_select(0, b)
    ci, cj = base + i, base + j
    pair = b * (3 * nn) + i * n + j
    vfr = vf.reshape(-1)
    vr = v.reshape(-1)
    Fr = F.reshape(-1)
    shifts, vec = [], []
    if n_comb > 1:
        cs = torch.as_tensor(combos, dtype=dtype).to(device)
        table = torch.matmul(cs.unsqueeze(0), cells).reshape(-1, 3)        # (B*C, 3)
        code = b * n_comb + comb
    for a in range(3):
        pa = pair + a * nn
        va = vr.index_select(0, pa)
        if n_comb > 1:
            va = va + table[:, a].contiguous().index_select(0, code)
        vec.append(va)
        if with_shift:
            # lo = vf - df, an integer up to rounding
            fb = b * (3 * n) + a * n
            df = Fr.index_select(0, fb + j) - Fr.index_select(0, fb + i)
            sa = torch.round(vfr.index_select(0, pa) - df)
            if n_comb > 1:
                sa = sa + cs[:, a].contiguous().index_select(0, comb)
            shifts.append(sa)
    if not with_shift:
        shifts = [None, None, None]
    return ci, cj, shifts[0], shifts[1], shifts[2], vec


def _reachable(cells, bound, combos, cutoff) -> np.ndarray:
    """(B, C) bool: whether images with offsets ``lo + combo`` can be within
    ``cutoff`` (numpy inputs; a necessary condition).

    Such an image has fractional components |f_a| >= combo_a - bound_a where
    combo_a >= 1 (others free), so its squared length is at least
    lambda_min(Gram of those cell vectors projected orthogonally to the others)
    * sum_a (combo_a - bound_a)^2.  Offsets in at most one direction are always
    kept (the per-pair distance test decides).
    """
    out = np.ones((cells.shape[0], len(combos)), dtype=bool)
    on_sets = (combos >= 1)
    several = on_sets[on_sets.sum(axis=1) >= 2]
    for mask in (np.unique(several, axis=0) if len(several) else ()):
        on = [a for a in range(3) if mask[a]]
        others = [a for a in range(3) if not mask[a]]
        A = cells[:, on]                                         # (B, k, 3)
        if others:
            o = cells[:, others[0]]
            o = o / np.linalg.norm(o, axis=1, keepdims=True)
            A = A - (A * o[:, None, :]).sum(axis=2, keepdims=True) * o[:, None, :]
        lam = np.linalg.eigvalsh(np.einsum("bik,bjk->bij", A, A))[:, 0]     # (B,)
        cols = np.nonzero((on_sets == mask).all(axis=1))[0]
        delta = np.clip(combos[cols][:, on][None, :, :] - bound[:, None, on], 0.0, None)
        lower = lam[:, None] * (delta * delta).sum(axis=2)                  # (B, len(cols))
        out[:, cols] = lower <= cutoff * cutoff * (1.0 + 1e-9)
    return out


def _binned_pairs(positions, cells, inv, pbcs, counts, sid, heights, bound, cutoff):
    """Cell-list candidate pairs for large structures; see the module docstring.

    Returns ``(ci, cj, s0, s1, s2)`` (shifts for the positions as given),
    grouped by centre.
    """
    frac = (positions.unsqueeze(2) * inv.index_select(0, sid)).sum(dim=1)   # (N, 3)
    per_atom_pbc = pbcs.index_select(0, sid)
    offset = torch.where(per_atom_pbc, torch.floor(frac), torch.zeros_like(frac))
    frac_w = frac - offset
    device, dtype = frac.device, frac.dtype
    n_struct = cells.shape[0]
    big = torch.finfo(dtype).max
    sid3 = sid.unsqueeze(1).expand(-1, 3)
    fmin = torch.full((n_struct, 3), big, dtype=dtype, device=device).scatter_reduce(
        0, sid3, frac, "amin", include_self=True)
    fmax = torch.full((n_struct, 3), -big, dtype=dtype, device=device).scatter_reduce(
        0, sid3, frac, "amax", include_self=True)
    span = torch.where(pbcs, torch.ones_like(fmin), fmax - fmin)
    extent = span * heights                                     # Å across the binned range
    bin_width = cutoff * (1.0 + _BIN_MARGIN)
    # cap the number of bins (sparse or long structures): a few per atom at most
    cap = torch.clamp(torch.ceil(torch.pow(4.0 * counts.to(dtype), 1.0 / 3.0)) + 2, min=1)
    nbins = torch.clamp(torch.floor(extent / bin_width), min=1)
    nbins = torch.minimum(nbins, cap.unsqueeze(1)).to(torch.long)  # (B, 3)
    rel = torch.where(per_atom_pbc, frac_w,
                      (frac - fmin[sid]) / torch.where(span > 0, span, torch.ones_like(span))[sid])
    nb_atom = nbins.index_select(0, sid)
    b = torch.minimum(torch.clamp(torch.floor(rel * nb_atom.to(dtype)), min=0).to(torch.long),
                      nb_atom - 1)                              # (N, 3) bin coordinates
    bins_per_struct = nbins.prod(dim=1)
    bin_offset = _excl_cumsum(bins_per_struct)
    n_bins_total = int(bins_per_struct.sum())

    def linear(bc: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
        return (bc[..., 0] * nb[..., 1] + bc[..., 1]) * nb[..., 2] + bc[..., 2]

    gbin = bin_offset.index_select(0, sid) + linear(b, nb_atom)
    order = torch.argsort(gbin, stable=True)
    bin_count = torch.bincount(gbin, minlength=n_bins_total)
    bin_start = _excl_cumsum(bin_count)

    # candidate neighbour bins: <= 27 distinct per atom (fewer when a periodic
    # direction has only one or two bins, where +-1 reach the same bins)
    rng = torch.arange(-1, 2, device=device)
    d = torch.stack(torch.meshgrid(rng, rng, rng, indexing="ij"), dim=-1).reshape(27, 3)
    nbb = b.unsqueeze(1) + d.unsqueeze(0)                        # (N, 27, 3)
    nb3 = nb_atom.unsqueeze(1)
    p3 = per_atom_pbc.unsqueeze(1)
    valid_p = (nb3 >= 3) | (d == 0) | ((nb3 == 2) & (d == 1))
    valid_n = (nbb >= 0) & (nbb < nb3)
    valid = torch.where(p3, valid_p, valid_n).all(dim=2).reshape(-1)   # (N*27,)
    nbb = torch.remainder(nbb, nb3)
    cand_bin = (bin_offset.index_select(0, sid).unsqueeze(1) + linear(nbb, nb3)).reshape(-1)
    slot_idx = torch.nonzero(valid).squeeze(1)
    cand_bin = cand_bin.index_select(0, slot_idx)
    cand_cnt = bin_count.index_select(0, cand_bin)
    cand_atom = torch.div(slot_idx, 27, rounding_mode="floor")
    n_pairs = int(cand_cnt.sum())
    slot = torch.repeat_interleave(torch.arange(cand_cnt.shape[0], device=device), cand_cnt,
                                   output_size=n_pairs)
    k = torch.arange(n_pairs, device=device) - _excl_cumsum(cand_cnt).index_select(0, slot)
    ci = cand_atom.index_select(0, slot)                         # pair centre
    cj = order.index_select(0, bin_start.index_select(0, cand_bin.index_select(0, slot)) + k)

    # image offset ranges per pair; non-periodic directions: offset 0 only
    pbc_f = pbcs.to(dtype).index_select(0, sid)                  # (N, 3)
    lo, span_i, df_l = [], [], []
    for a in range(3):
        fa = frac_w[:, a].contiguous()
        df = fa.index_select(0, cj) - fa.index_select(0, ci)
        pa = pbc_f[:, a].contiguous().index_select(0, ci)
        bnd = bound[:, a].contiguous().index_select(0, sid).index_select(0, ci)
        lo_a = torch.ceil(-df - bnd) * pa
        hi_a = torch.floor(bnd - df) * pa
        span_i.append(torch.clamp(hi_a - lo_a + 1, min=0))
        lo.append(lo_a)
        df_l.append(df)
    cells9 = cells.reshape(-1, 9)
    ci, cj, s0, s1, s2 = _expand_images(
        ci, cj, lo, span_i, df_l,
        lambda q: cells9.index_select(0, sid.index_select(0, ci.index_select(0, q))), cutoff)
    # offsets found for the wrapped positions -> offsets for the positions as given
    s0 = s0 + offset[:, 0].index_select(0, ci) - offset[:, 0].index_select(0, cj)
    s1 = s1 + offset[:, 1].index_select(0, ci) - offset[:, 1].index_select(0, cj)
    s2 = s2 + offset[:, 2].index_select(0, ci) - offset[:, 2].index_select(0, cj)
    return ci, cj, s0, s1, s2
