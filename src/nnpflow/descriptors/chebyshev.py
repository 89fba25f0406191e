"""aenet's Chebyshev (Artrith-Urban-Ceder) descriptor, batched in torch.

For atom i with neighbours j (all periodic images, distances r_ij in
(min_cutoff, cutoff], unit vectors u_ij):

* radial, n = 0..R:  G_n = sum_j T_n(2 r_ij / Rc_r - 1) fc(r_ij; Rc_r)
* angular, n = 0..A: G_n = sum_{j<k} T_n(u_ij . u_ik) fc(r_ij; Rc_a) fc(r_ik; Rc_a)
  (each unordered pair of neighbours once; periodic images are distinct neighbours)
* with two or more species, the same sums weighted by the typespins s_j
  (radial) and s_j s_k (angular) follow; feature order
  [radial, angular, weighted radial, weighted angular], F = 2 (R + A + 2);
  a single species gives F = R + A + 2.

fc(r; Rc) = 1/2 (cos(pi r / Rc) + 1) for r < Rc, else 0; T_n are Chebyshev
polynomials of the first kind.  These are the definitions of aenet's
``sfbasis.f90`` (``sfb_eval``, ``sfb_radial``, ``sfb_angular``), checked against
aenet's own reference values in the tests.  The angular sums are evaluated per
edge through the Legendre addition theorem (:mod:`.angular`), which gives the
same values to rounding without enumerating neighbour pairs.

Units: Å for positions, cutoffs and distances; features are dimensionless.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..runtime import resolve_device
from ..safe_write import canonical_json
from ..structure import ELEMENTS
from .angular import AngularBasis
from .radial import chebyshev_rows, cutoff_function
from .batching import AtomsBatch, collate, plan_chunks, structure_arrays
from .derivatives import DescriptorDerivatives
from .workspace import Workspace
from . import neighbors as _neighbors
from .neighbors import image_reach, pair_search

__all__ = ["ChebyshevDescriptor", "ClosePair", "typespin_values"]


DESCRIPTOR_TYPE = "aenet-chebyshev"
DESCRIPTOR_VERSION = 1

#: Work per vectorised pass (padded atom pairs of the dense neighbour search, see
#: ``batching.plan_chunks``): on the CPU ~8 cells of 108 atoms, whose temporaries
#: (~25 MB, kept in the descriptor's workspace) stay close to the caches -- 25-35 %
#: faster per atom than ~34 cells per pass (benchmarks/featurize.py); on GPUs
#: ~40x more atoms.
_CHUNK_PAIRS = {"cpu": 100_000, "cuda": 4_000_000}


@dataclass(frozen=True)
class ClosePair:
    """The closest pair of atoms of one structure at or below the descriptor's
    ``min_cutoff``, which its features leave out (see ``close_pairs`` of
    :meth:`ChebyshevDescriptor.featurize_batch`).

    ``index`` is the structure's position in the input, ``i`` and ``j`` 0-based
    atom indices (``i == j``: an atom and its own periodic image), ``distance``
    in Å.
    """

    index: int
    i: int
    j: int
    distance: float


def typespin_values(n_species: int) -> list[float]:
    """aenet's typespin weights for ``n_species`` species, in species-list order.

    Rule of aenet's ``new_SFBasis`` (src/ext/sfbasis.f90, atomisticnet/aenet):
    start at ``s = -(n // 2)``, step by one, and skip zero when ``n`` is even.
    Two species: -1, 1; three: -1, 0, 1; four: -2, -1, 1, 2; five: -2 .. 2.
    """
    out = []
    s = -(n_species // 2)
    for _ in range(n_species):
        if s == 0 and n_species % 2 == 0:
            s += 1
        out.append(float(s))
        s += 1
    return out


def transposed(t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``t.t().contiguous()`` of a 2-D tensor (written into ``out``, a contiguous
    tensor of the transposed shape, when given); on the CPU through numpy, whose
    blocked transpose is 2-3x faster than torch's strided copy."""
    if t.device.type == "cpu" and not t.requires_grad:
        if out is None:
            return torch.from_numpy(np.ascontiguousarray(t.numpy().T))
        np.copyto(out.numpy(), t.numpy().T)
        return out
    if out is None:
        return t.t().contiguous()
    return out.copy_(t.t())


def csr_matrix(crow, col, values, size) -> torch.Tensor:
    """A CSR tensor without invariant checks.  torch labels sparse CSR as beta
    and warns once; the descriptor uses only its stable core (construction and
    sparse @ dense products), so that warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def stacked_csr(rows: torch.Tensor, n_rows: int, values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Vertical stack of CSR matrices (n_rows, E) sharing their pattern: column
    ``e`` has one entry, at row ``rows[e]`` (``rows`` sorted ascending), with
    value ``values[k][e]`` in block k.  Shape (len(values) * n_rows, E)."""
    n = rows.shape[0]
    k = len(values)
    idx = torch.int32 if k * n < 2**31 - 1 else torch.long
    counts = torch.bincount(rows, minlength=n_rows)
    crow_one = torch.cumsum(counts, 0)
    crow = torch.zeros(k * n_rows + 1, dtype=idx, device=rows.device)
    crow[1:] = (crow_one.unsqueeze(0) + n * torch.arange(k, device=rows.device).unsqueeze(1)).reshape(-1)
    col = torch.arange(n, device=rows.device, dtype=idx).repeat(k)
    return csr_matrix(crow, col, torch.cat(list(values)), (k * n_rows, n))


class ChebyshevDescriptor:
    """aenet's Chebyshev descriptor with analytic derivatives (see module docstring).

    Parameters
    ----------
    species : sequence of str
        Element symbols; their order fixes the typespin weights.
    rad_order, ang_order : int
        Highest Chebyshev order of the radial and angular terms.
    rad_cutoff, ang_cutoff : float
        Cutoff radii in Å.
    min_cutoff : float
        Neighbours at or below this distance (Å) are ignored.
    device : str or torch.device
        ``"cpu"``, ``"cuda"`` or ``"auto"``; where features are computed.
    dtype : torch.dtype
        ``torch.float64`` (default) or ``torch.float32``.

    Attributes
    ----------
    workspace : :class:`~nnpflow.descriptors.workspace.Workspace`
        Scratch memory of the large temporaries of a batch, kept for the next
        batch (CPU only, per thread; about 25 MB for the default pass size with
        108-atom cells and a 6 Å cutoff); ``workspace.clear()`` releases it.
    """

    def __init__(self, species: Sequence[str], rad_order: int, rad_cutoff: float,
                 ang_order: int, ang_cutoff: float, min_cutoff: float = 0.55,
                 device="cpu", dtype: torch.dtype = torch.float64):
        species = [str(s) for s in species]
        if not species:
            raise ConfigError("descriptor needs at least one species")
        for s in species:
            if s not in ELEMENTS:
                raise ConfigError(f"descriptor species {s!r} is not an element symbol")
        if len(set(species)) != len(species):
            raise ConfigError(f"descriptor species list has duplicates: {species}")
        for name, value in (("rad_order", rad_order), ("ang_order", ang_order)):
            if isinstance(value, bool) or int(value) != value or int(value) < 0:
                raise ConfigError(f"descriptor {name} must be a non-negative integer, got {value!r}")
        try:
            rad_cutoff, ang_cutoff, min_cutoff = float(rad_cutoff), float(ang_cutoff), float(min_cutoff)
        except (TypeError, ValueError):
            raise ConfigError("descriptor cutoffs must be numbers") from None
        if not (math.isfinite(min_cutoff) and min_cutoff >= 0):
            raise ConfigError(f"descriptor min_cutoff must be >= 0, got {min_cutoff}")
        for name, value in (("rad_cutoff", rad_cutoff), ("ang_cutoff", ang_cutoff)):
            if not (math.isfinite(value) and value > min_cutoff):
                raise ConfigError(f"descriptor {name} must be larger than min_cutoff "
                                  f"({min_cutoff} Å), got {value}")
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"descriptor dtype must be torch.float32 or torch.float64, got {dtype}")
        self.species = species
        self.species_to_idx = {s: i for i, s in enumerate(species)}
        self.rad_order = int(rad_order)
        self.ang_order = int(ang_order)
        self.rad_cutoff = rad_cutoff
        self.ang_cutoff = ang_cutoff
        self.min_cutoff = min_cutoff
        self.device = resolve_device(device)
        self.dtype = dtype
        self.multi = len(species) > 1
        self.n_rad = self.rad_order + 1
        self.n_ang = self.ang_order + 1
        self.n_features = (self.n_rad + self.n_ang) * (2 if self.multi else 1)
        self.typespin = torch.tensor(typespin_values(len(species)), dtype=dtype,
                                     device=self.device)
        self.angular_basis = AngularBasis(self.ang_order, device=self.device, dtype=dtype)
        self.neighbor_cutoff = max(rad_cutoff, ang_cutoff)
        # scratch memory of the large temporaries, kept from batch to batch (CPU)
        self.workspace = Workspace()

    # ------------------------------------------------------------ settings
    def config(self) -> dict:
        """Canonical settings (JSON-ready); equal settings give equal dicts."""
        return {
            "type": DESCRIPTOR_TYPE,
            "version": DESCRIPTOR_VERSION,
            "species": list(self.species),
            "rad_order": self.rad_order,
            "rad_cutoff": self.rad_cutoff,
            "ang_order": self.ang_order,
            "ang_cutoff": self.ang_cutoff,
            "min_cutoff": self.min_cutoff,
        }

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`config`."""
        return hashlib.sha256(canonical_json(self.config()).encode()).hexdigest()

    @classmethod
    def from_config(cls, cfg: dict, device="cpu", dtype: torch.dtype = torch.float64
                    ) -> "ChebyshevDescriptor":
        """Rebuild from :meth:`config` output; unknown keys or types are errors."""
        cfg = dict(cfg)
        kind = cfg.pop("type", DESCRIPTOR_TYPE)
        version = cfg.pop("version", DESCRIPTOR_VERSION)
        if kind != DESCRIPTOR_TYPE:
            raise ConfigError(f"descriptor type {kind!r} is not {DESCRIPTOR_TYPE!r}")
        if version != DESCRIPTOR_VERSION:
            raise ConfigError(f"descriptor version {version!r} is not supported "
                              f"(this nnpflow writes version {DESCRIPTOR_VERSION})")
        allowed = {"species", "rad_order", "rad_cutoff", "ang_order", "ang_cutoff", "min_cutoff"}
        unknown = sorted(set(cfg) - allowed)
        if unknown:
            raise ConfigError(f"unknown descriptor setting(s): {', '.join(unknown)}")
        missing = sorted(allowed - {"min_cutoff"} - set(cfg))
        if missing:
            raise ConfigError(f"descriptor setting(s) missing: {', '.join(missing)}")
        return cls(device=device, dtype=dtype, **cfg)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ChebyshevDescriptor":
        """The same descriptor on another device and/or dtype."""
        return type(self)(self.species, self.rad_order, self.rad_cutoff, self.ang_order,
                          self.ang_cutoff, self.min_cutoff,
                          device=self.device if device is None else device,
                          dtype=self.dtype if dtype is None else dtype)

    def __repr__(self) -> str:
        return (f"ChebyshevDescriptor(species={self.species}, rad_order={self.rad_order}, "
                f"rad_cutoff={self.rad_cutoff}, ang_order={self.ang_order}, "
                f"ang_cutoff={self.ang_cutoff}, min_cutoff={self.min_cutoff}, "
                f"n_features={self.n_features}, device={str(self.device)!r}, dtype={self.dtype})")

    def feature_slices(self) -> dict[str, slice]:
        """Column ranges of the feature blocks (``radial``, ``angular`` and, for
        several species, ``weighted_radial``, ``weighted_angular``)."""
        r, a = self.n_rad, self.n_ang
        out = {"radial": slice(0, r), "angular": slice(r, r + a)}
        if self.multi:
            out["weighted_radial"] = slice(r + a, 2 * r + a)
            out["weighted_angular"] = slice(2 * r + a, 2 * (r + a))
        return out

    # ----------------------------------------------------------- featurize
    def featurize(self, structure) -> torch.Tensor:
        """Features (N, F) of one ``Structure`` or ``ase.Atoms``."""
        return self.featurize_batch([structure])[0]

    def featurize_with_derivatives(self, structure):
        """``(features (N, F), DescriptorDerivatives)`` of one structure."""
        feats, derivs = self.featurize_batch_with_derivatives([structure])
        return feats[0], derivs[0]

    def featurize_batch(self, structures: Iterable, chunk_pairs: int | None = None, *,
                        close_pairs: list | None = None) -> list[torch.Tensor]:
        """Features of many structures, computed in few vectorised passes.

        ``chunk_pairs`` bounds the work per pass (padded atom pairs of the dense
        neighbour search); the default suits the device.  Returns one (N_s, F)
        tensor per structure, in input order.

        ``close_pairs``: a list that receives one :class:`ClosePair` for each
        structure with two atoms (periodic images included) at or below
        ``min_cutoff`` -- pairs the features leave out -- found by the
        neighbour search itself at no extra cost; structures in input order.
        """
        return self._run(list(structures), False, chunk_pairs, close_pairs)[0]

    def featurize_batch_with_derivatives(self, structures: Iterable,
                                         chunk_pairs: int | None = None, *,
                                         close_pairs: list | None = None):
        """``(features, derivatives)``: two lists (input order) of (N_s, F) tensors
        and :class:`DescriptorDerivatives`, computed in few vectorised passes
        (``close_pairs`` as for :meth:`featurize_batch`)."""
        return self._run(list(structures), True, chunk_pairs, close_pairs)

    # ------------------------------------------------------------ internals
    @torch.no_grad()
    def _run(self, structures: list, with_derivatives: bool, chunk_pairs: int | None,
             close_pairs: list | None = None):
        items = [structure_arrays(s) for s in structures]
        if chunk_pairs is None:
            chunk_pairs = _CHUNK_PAIRS.get(self.device.type, _CHUNK_PAIRS["cuda"])
        elif isinstance(chunk_pairs, bool) or int(chunk_pairs) != chunk_pairs or chunk_pairs < 1:
            raise ValueError(f"chunk_pairs must be a positive integer, got {chunk_pairs!r}")
        if len(items) == 1:             # one structure: one pass, nothing to plan
            chunks = [[0]]
        else:
            sizes = [it[0].shape[0] for it in items]
            keys = [image_reach(it[1], it[2], self.neighbor_cutoff) for it in items]
            chunks = plan_chunks(sizes, keys, int(chunk_pairs), _neighbors.DENSE_MAX_ATOMS)
        feats: list = [None] * len(items)
        derivs: list = [None] * len(items)
        found: list[ClosePair] = []
        for chunk in chunks:
            batch = collate([items[i] for i in chunk], self.species_to_idx, self.device,
                            self.dtype)
            dropped: list | None = [] if close_pairs is not None else None
            center, neighbor, vec, r = self.edges(batch, dropped)
            if dropped:
                found.extend(_closest_per_structure(chunk, batch.counts_list, *dropped[0]))
            f = self.features_from_edges(batch.species, center, neighbor, vec, r)
            counts = batch.counts_list
            for i, part in zip(chunk, torch.split(f, counts)):
                feats[i] = part
            if with_derivatives:
                vector = torch.stack(vec, dim=1)
                for i, d in zip(chunk, DescriptorDerivatives.split_batch(
                        self, batch.species, center, neighbor, vector, counts)):
                    derivs[i] = d
        if close_pairs is not None:
            close_pairs.extend(sorted(found, key=lambda c: c.index))
        return feats, derivs

    def edges(self, batch: AtomsBatch, dropped: list | None = None):
        """Edges of a collated batch: ``(center, neighbor, [vx, vy, vz], r)`` for
        neighbours with min_cutoff < r <= max(rad_cutoff, ang_cutoff), grouped by
        centre; vector components and distances in Å.

        ``dropped``: a list that receives ``(center, neighbor, r)`` of the pairs at
        or below min_cutoff (batch atom indices), when there are any."""
        ci, cj, _, vec, dist = pair_search(batch.positions, batch.cells, batch.pbcs,
                                           batch.counts, self.neighbor_cutoff,
                                           with_shift=False, workspace=self.workspace)
        keep = dist > self.min_cutoff
        if not bool(keep.all()):
            if dropped is not None:
                out = torch.nonzero(~keep).squeeze(1)
                dropped.append((ci.index_select(0, out), cj.index_select(0, out),
                                dist.index_select(0, out)))
            idx = torch.nonzero(keep).squeeze(1)
            return (ci.index_select(0, idx), cj.index_select(0, idx),
                    [x.index_select(0, idx) for x in vec], dist.index_select(0, idx))
        return ci, cj, vec, dist

    def features_from_edges(self, species: torch.Tensor, center: torch.Tensor,
                            neighbor: torch.Tensor, vector, r: torch.Tensor | None = None
                            ) -> torch.Tensor:
        """Features (N, F) from edges grouped by centre (see :meth:`edges`).

        ``species`` (N,) are species indices; ``vector`` the edge vectors in Å,
        an (E, 3) tensor or a list of its three columns; ``r`` their lengths.
        """
        n_atoms = species.shape[0]
        if isinstance(vector, torch.Tensor):
            vector = [vector[:, a].to(self.dtype) for a in range(3)]
        if r is None:
            r = torch.sqrt(vector[0] * vector[0] + vector[1] * vector[1] + vector[2] * vector[2])
        spin = (self.typespin.index_select(0, species.index_select(0, neighbor))
                if self.multi else None)
        blocks = self._radial(n_atoms, center, spin, r)
        ang = self._angular(n_atoms, center, spin, vector, r)
        if self.multi:
            out = torch.cat((blocks[:n_atoms], ang[:n_atoms], blocks[n_atoms:], ang[n_atoms:]),
                            dim=1)
        else:
            out = torch.cat((blocks, ang), dim=1)
        return out

    def _radial(self, n_atoms, center, spin, r):
        rc = self.rad_cutoff
        e, ws = r.shape[0], self.workspace
        t = chebyshev_rows(r * (2.0 / rc) - 1.0, self.rad_order,
                           out=ws.take("cheb", (self.n_rad, e), r.dtype, r.device))  # (R+1, E)
        # edges reach max(rad_cutoff, ang_cutoff); at r == rc fc is 0 anyway
        fc = cutoff_function(r, rc, all_inside=rc >= self.neighbor_cutoff)
        w = [fc, spin * fc] if self.multi else [fc]
        mat = stacked_csr(center, n_atoms, w)
        return mat @ transposed(t, out=ws.take("cheb_t", (e, self.n_rad), r.dtype,
                                               r.device))               # (k N, R+1)

    def _angular(self, n_atoms, center, spin, vector, r):
        rc = self.ang_cutoff
        k = 2 if self.multi else 1
        idx = torch.nonzero(r < rc).squeeze(1)
        basis = self.angular_basis
        if idx.shape[0] == 0:
            return torch.zeros(k * n_atoms, self.n_ang, dtype=self.dtype, device=self.device)
        ra = r.index_select(0, idx)
        ca = center.index_select(0, idx)
        inv = 1.0 / ra
        ea, nm, ws = ra.shape[0], basis.n_monomials, self.workspace
        mono = basis.monomials(*(x.index_select(0, idx) * inv for x in vector),
                               out=ws.take("mono", (nm, ea), ra.dtype, ra.device))
        fa = cutoff_function(ra, rc, all_inside=True)
        w = [fa, spin.index_select(0, idx) * fa] if self.multi else [fa]
        # harmonic sums B = sum_j w_j Y(u_j) = (sum_j w_j monomials(u_j)) @ C^T
        mono_e = transposed(mono.t(), out=ws.take("mono_t", (ea, nm), ra.dtype, ra.device))
        b = (stacked_csr(ca, n_atoms, w) @ mono_e) @ basis.values_coef_t
        sq = torch.zeros(k * n_atoms, dtype=self.dtype, device=self.device)
        for i, wi in enumerate(w):
            sq.index_add_(0, ca + i * n_atoms, wi * wi)
        g = (b * b) @ basis.pair_matrix
        return 0.5 * (g - sq.unsqueeze(1))


def _closest_per_structure(chunk: Sequence[int], counts: Sequence[int], center: torch.Tensor,
                           neighbor: torch.Tensor, r: torch.Tensor) -> list[ClosePair]:
    """One :class:`ClosePair` per structure of a chunk from its dropped pairs
    (batch atom indices ``center``/``neighbor``, distances ``r`` in Å); ``chunk``
    maps batch positions to input indices."""
    starts = np.concatenate(([0], np.cumsum(counts)))
    ci, cj = center.cpu().numpy(), neighbor.cpu().numpy()
    d = r.detach().cpu().to(torch.float64).numpy()
    which = np.searchsorted(starts, ci, side="right") - 1
    out = []
    for b in np.unique(which):
        rows = np.flatnonzero(which == b)
        k = rows[np.argmin(d[rows])]
        out.append(ClosePair(index=int(chunk[b]), i=int(ci[k] - starts[b]),
                             j=int(cj[k] - starts[b]), distance=float(d[k])))
    return out
