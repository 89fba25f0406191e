"""Exact, mergeable statistics: counts, means, second moments, minima and maxima.

Statistics are kept as *moments* ``(count, mean, M2, min, max)`` with
``M2 = sum (x - mean)^2``.  Two sets of moments combine exactly with the
parallel formula of Chan, Golub and LeVeque (1979)::

    n = na + nb,  d = mean_b - mean_a
    mean = mean_a + d * nb / n
    M2   = M2_a + M2_b + d^2 * na * nb / n

so statistics of shards merge into those of the whole database without a second
pass over the data, and the per-structure moments stored in the database give
exact statistics of any subset of structures (e.g. a training split).
Variances are population variances (``M2 / n``, as ``numpy.std``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np


@dataclass
class Moments:
    """Moments of a set of values of one shape (scalars or vectors).

    Attributes
    ----------
    count : int
        Number of values.
    mean, m2, min, max : ndarray, the values' shape, float64
        Mean, sum of squared deviations from the mean, minimum and maximum
        (``nan``, ``0``, ``+inf``, ``-inf`` while empty).
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...] = ()) -> "Moments":
        return cls(0, np.full(shape, np.nan), np.zeros(shape),
                   np.full(shape, np.inf), np.full(shape, -np.inf))

    @classmethod
    def of(cls, values: np.ndarray, shape: tuple[int, ...] | None = None) -> "Moments":
        """Moments of ``values`` with shape ``(n, *shape)`` (two passes, float64)."""
        x = np.asarray(values, dtype=np.float64)
        if shape is None:
            shape = x.shape[1:]
        x = x.reshape((-1,) + tuple(shape))
        if x.shape[0] == 0:
            return cls.empty(tuple(shape))
        mean = x.mean(axis=0)
        return cls(int(x.shape[0]), mean, ((x - mean) ** 2).sum(axis=0),
                   x.min(axis=0), x.max(axis=0))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.mean))

    def merge(self, other: "Moments") -> "Moments":
        """The moments of the union of both value sets (Chan et al.)."""
        if other.count == 0:
            return Moments(self.count, np.array(self.mean), np.array(self.m2),
                           np.array(self.min), np.array(self.max))
        if self.count == 0:
            return Moments(other.count, np.array(other.mean), np.array(other.m2),
                           np.array(other.min), np.array(other.max))
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta ** 2 * (self.count * other.count / n)
        return Moments(n, mean, m2, np.minimum(self.min, other.min),
                       np.maximum(self.max, other.max))

    def update(self, values: np.ndarray) -> "Moments":
        """``self.merge(Moments.of(values))``."""
        return self.merge(Moments.of(values, self.shape))

    @property
    def variance(self) -> np.ndarray:
        """Population variance ``M2 / count`` (nan while empty)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.m2 / self.count if self.count else np.full(self.shape, np.nan)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)

    # ---------------------------------------------------------------- JSON form
    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (exact: Python writes floats with round-trip repr)."""
        def js(a):
            a = np.asarray(a, dtype=np.float64)
            out = a.tolist()
            return _finite_or_none(out)
        return {"count": int(self.count), "mean": js(self.mean), "m2": js(self.m2),
                "min": js(self.min), "max": js(self.max), "std": js(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Moments":
        def arr(v, fill):
            a = np.array(_none_to(v, fill), dtype=np.float64)
            return a
        count = int(d["count"])
        mean = arr(d["mean"], np.nan)
        m2 = arr(d["m2"], 0.0)
        return cls(count, mean, m2, arr(d["min"], np.inf), arr(d["max"], -np.inf))


def _finite_or_none(obj):
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj if math.isfinite(obj) else None


def _none_to(obj, fill):
    if isinstance(obj, list):
        return [_none_to(v, fill) for v in obj]
    return fill if obj is None else obj


def combine_groups(counts: np.ndarray, means: np.ndarray, m2s: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine many groups' moments along axis 0 in one vectorised step.

    ``counts`` (K, ...) and ``means``/``m2s`` (K, ..., F) -> ``(count (...),
    mean (..., F), m2 (..., F))``: exactly the moments of the union, computed as
    ``mean = sum c_k mean_k / n`` and ``M2 = sum M2_k + sum c_k (mean_k - mean)^2``.
    Groups with count 0 contribute nothing (their mean may be anything).
    """
    c = np.asarray(counts, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    m2s = np.asarray(m2s, dtype=np.float64)
    n = c.sum(axis=0)
    cw = c[..., None]
    safe = np.where(cw > 0, means, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (cw * safe).sum(axis=0) / n[..., None]
    dev = np.where(cw > 0, safe - mean, 0.0)
    m2 = np.where(cw > 0, m2s, 0.0).sum(axis=0) + (cw * dev ** 2).sum(axis=0)
    return n.astype(np.int64), mean, m2


def group_moments(values: np.ndarray, group: np.ndarray, n_groups: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group moments of rows: ``values`` (A, F), ``group`` (A,) ints < n_groups.

    Returns ``count (G,) int64, mean (G, F), m2 (G, F)`` in float64 (two passes;
    empty groups get mean 0 and m2 0).
    """
    x = np.asarray(values, dtype=np.float64)
    g = np.asarray(group, dtype=np.int64)
    n_feat = x.shape[1]
    count = np.bincount(g, minlength=n_groups).astype(np.int64)
    mean = np.zeros((n_groups, n_feat))
    m2 = np.zeros((n_groups, n_feat))
    if x.shape[0] == 0:
        return count, mean, m2
    order = np.argsort(g, kind="stable")
    xs = x[order]
    gs = g[order]
    present = np.flatnonzero(count)
    starts = np.concatenate(([0], np.cumsum(count)[:-1]))[present]
    sums = np.add.reduceat(xs, starts, axis=0)
    mean[present] = sums / count[present, None]
    dev = xs - mean[gs]
    m2[present] = np.add.reduceat(dev * dev, starts, axis=0)
    return count, mean, m2


class DatabaseStatistics:
    """Running statistics of a database, updated per written block and mergeable.

    Holds, in eV / Å units:

    * ``energy`` — total energies of structures with an energy (eV);
    * ``energy_per_atom`` — ``E / N`` (eV/atom);
    * ``referenced_energy_per_atom`` — ``(E - sum E_ref) / N`` with the
      database's ``atomic_energies`` (all zero when none are set);
    * ``forces`` — force components of structures with forces (eV/Å);
    * ``features`` — per descriptor species, moments of the raw features
      (shape (F,)), when features are persisted;
    * counts: structures, atoms, atoms per species, structures with energies
      and with forces.
    """

    def __init__(self, feature_species: list[str] | None = None, n_features: int = 0):
        self.n_structures = 0
        self.n_atoms = 0
        self.n_with_energy = 0
        self.n_with_forces = 0
        self.species_counts: dict[str, int] = {}
        self.energy = Moments.empty()
        self.energy_per_atom = Moments.empty()
        self.referenced_energy_per_atom = Moments.empty()
        self.forces = Moments.empty()
        self.feature_species = list(feature_species or [])
        self.n_features = int(n_features)
        self.features: dict[str, Moments] | None = (
            {s: Moments.empty((self.n_features,)) for s in self.feature_species}
            if feature_species is not None and n_features else None)

    # ------------------------------------------------------------------ update
    def update(self, *, n_atoms: np.ndarray, species_counts: Mapping[str, int],
               energy: np.ndarray, reference: np.ndarray, forces: np.ndarray | None,
               n_with_forces: int, feature_moments: tuple[np.ndarray, np.ndarray,
                                                          np.ndarray] | None = None,
               feature_minmax: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Add one block of structures.

        ``n_atoms`` (k,), ``energy`` (k,) eV with NaN for missing, ``reference``
        (k,) summed atomic reference energies eV, ``forces`` (m, 3) components of
        structures with forces; ``feature_moments`` = per-species
        ``(count (T,), mean (T, F), m2 (T, F))`` of this block and
        ``feature_minmax`` = ``(min (T, F), max (T, F))``.
        """
        n_atoms = np.asarray(n_atoms, dtype=np.int64)
        self.n_structures += int(n_atoms.size)
        self.n_atoms += int(n_atoms.sum())
        for s, c in species_counts.items():
            self.species_counts[s] = self.species_counts.get(s, 0) + int(c)
        energy = np.asarray(energy, dtype=np.float64)
        ok = np.isfinite(energy)
        self.n_with_energy += int(ok.sum())
        if ok.any():
            e = energy[ok]
            n = n_atoms[ok]
            self.energy = self.energy.update(e)
            self.energy_per_atom = self.energy_per_atom.update(e / n)
            self.referenced_energy_per_atom = self.referenced_energy_per_atom.update(
                (e - np.asarray(reference, dtype=np.float64)[ok]) / n)
        self.n_with_forces += int(n_with_forces)
        if forces is not None and len(forces):
            self.forces = self.forces.update(np.asarray(forces).reshape(-1))
        if feature_moments is not None:
            if self.features is None:
                raise ValueError("feature statistics given to statistics without features")
            counts, means, m2s = feature_moments
            mins, maxs = feature_minmax
            for t, s in enumerate(self.feature_species):
                c = int(counts[t])
                if c == 0:
                    continue
                block = Moments(c, np.asarray(means[t], dtype=np.float64),
                                np.asarray(m2s[t], dtype=np.float64),
                                np.asarray(mins[t], dtype=np.float64),
                                np.asarray(maxs[t], dtype=np.float64))
                self.features[s] = self.features[s].merge(block)

    def merge(self, other: "DatabaseStatistics") -> "DatabaseStatistics":
        """Statistics of the concatenation of both databases (exact)."""
        if (self.features is None) != (other.features is None) or (
                self.features is not None and (self.feature_species != other.feature_species
                                               or self.n_features != other.n_features)):
            raise ValueError("cannot merge statistics of databases with different features")
        out = DatabaseStatistics(self.feature_species if self.features is not None else None,
                                 self.n_features)
        out.n_structures = self.n_structures + other.n_structures
        out.n_atoms = self.n_atoms + other.n_atoms
        out.n_with_energy = self.n_with_energy + other.n_with_energy
        out.n_with_forces = self.n_with_forces + other.n_with_forces
        for counts in (self.species_counts, other.species_counts):
            for s, c in counts.items():
                out.species_counts[s] = out.species_counts.get(s, 0) + c
        for name in ("energy", "energy_per_atom", "referenced_energy_per_atom", "forces"):
            setattr(out, name, getattr(self, name).merge(getattr(other, name)))
        if self.features is not None:
            out.features = {s: self.features[s].merge(other.features[s])
                            for s in self.feature_species}
        return out

    # ---------------------------------------------------------------- JSON form
    def to_dict(self) -> dict[str, Any]:
        from ..structure import atomic_number
        out: dict[str, Any] = {
            "n_structures": self.n_structures,
            "n_atoms": self.n_atoms,
            "n_with_energy": self.n_with_energy,
            "n_with_forces": self.n_with_forces,
            "species_counts": {s: self.species_counts[s] for s in
                               sorted(self.species_counts, key=atomic_number)},
            "energy": self.energy.to_dict(),
            "energy_per_atom": self.energy_per_atom.to_dict(),
            "referenced_energy_per_atom": self.referenced_energy_per_atom.to_dict(),
            "forces": self.forces.to_dict(),
            "features": None,
        }
        if self.features is not None:
            out["features"] = {"species": list(self.feature_species),
                               "n_features": self.n_features,
                               "per_species": {s: self.features[s].to_dict()
                                               for s in self.feature_species}}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatabaseStatistics":
        feats = d.get("features")
        out = cls(feats["species"] if feats else None, feats["n_features"] if feats else 0)
        out.n_structures = int(d["n_structures"])
        out.n_atoms = int(d["n_atoms"])
        out.n_with_energy = int(d["n_with_energy"])
        out.n_with_forces = int(d["n_with_forces"])
        out.species_counts = {s: int(c) for s, c in d["species_counts"].items()}
        for name in ("energy", "energy_per_atom", "referenced_energy_per_atom", "forces"):
            setattr(out, name, Moments.from_dict(d[name]))
        if feats:
            out.features = {s: Moments.from_dict(feats["per_species"][s])
                            for s in out.feature_species}
        return out
