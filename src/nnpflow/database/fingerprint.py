"""Fingerprints of a database's content.

Two SHA-256 fingerprints identify a database:

* ``structures_fingerprint`` — over the ordered list of ``(label, structure
  content hash)`` pairs and the filter settings (``max_energy``,
  ``atomic_energies``).  It does not depend on the descriptor, so a split keyed
  on it stays valid when only the descriptor changes.
* ``fingerprint`` — over ``structures_fingerprint``, the descriptor's
  fingerprint (SHA-256 of its canonical config; ``None`` without features) and
  what is persisted (features, force derivatives, their dtype).

Both are computed while streaming, so neither needs the whole database in memory.
:func:`structures_fingerprint` is the only definition of the structures
fingerprint in nnpflow: the workflow's manifest (``manifest.json``, through
:func:`nnpflow.io.manifest.rows_fingerprint`), the database writer, the merge
and the split all use it, so a manifest, the database built from it and the
split drawn from it carry the same value.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping

from ..safe_write import canonical_json

#: tag mixed into the structures fingerprint; bump when its definition changes
STRUCTURES_TAG = "nnpflow-structures-v1"
DATABASE_TAG = "nnpflow-database-v1"


def filter_config(filter_meta: Mapping[str, Any] | None) -> dict:
    """Canonical form of filter settings: ``{"max_energy": float|None,
    "atomic_energies": {species: float}}`` (missing keys -> None / {})."""
    meta = dict(filter_meta or {})
    unknown = set(meta) - {"max_energy", "atomic_energies"}
    if unknown:
        raise ValueError(f"unknown filter settings {sorted(unknown)}; "
                         "expected max_energy and atomic_energies")
    max_energy = meta.get("max_energy")
    atomic = meta.get("atomic_energies") or {}
    return {"max_energy": None if max_energy is None else float(max_energy),
            "atomic_energies": {str(k): float(v) for k, v in sorted(atomic.items())}}


class StructuresFingerprint:
    """Streaming structures fingerprint: ``add(label, content_hash)`` in order,
    then ``hexdigest(filter_meta)``."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0

    def add(self, label: str, content_hash: str) -> None:
        """Add one structure: its source label and ``Structure.content_hash()`` (hex)."""
        self._h.update(label.encode("utf-8"))
        self._h.update(b"\0")
        self._h.update(content_hash.encode("ascii"))
        self._h.update(b"\n")
        self.count += 1

    def update(self, pairs: Iterable[tuple[str, str]]) -> "StructuresFingerprint":
        for label, digest in pairs:
            self.add(label, digest)
        return self

    def hexdigest(self, filter_meta: Mapping[str, Any] | None = None) -> str:
        payload = {"tag": STRUCTURES_TAG, "count": self.count,
                   "structures": self._h.hexdigest(), "filter": filter_config(filter_meta)}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def structures_fingerprint(pairs: Iterable[tuple[str, str]],
                           filter_meta: Mapping[str, Any] | None = None) -> str:
    """Fingerprint of ordered ``(label, content hash)`` pairs and filter settings."""
    return StructuresFingerprint().update(pairs).hexdigest(filter_meta)


def database_fingerprint(structures_fp: str, descriptor_sha256: str | None,
                         persisted: Mapping[str, Any]) -> str:
    """Fingerprint of a whole database: structures, descriptor and persisted content.

    ``persisted`` is the layout's ``{"features": bool, "force_derivatives": bool,
    "dtype": str}``.
    """
    payload = {"tag": DATABASE_TAG, "structures": structures_fp,
               "descriptor": descriptor_sha256,
               "features": bool(persisted.get("features")),
               "force_derivatives": bool(persisted.get("force_derivatives")),
               "dtype": persisted.get("dtype")}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
