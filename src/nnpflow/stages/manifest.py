"""Stage ``manifest``: join the shard manifests into one manifest and its summary.

Inputs are the ingest stage's per-shard TSVs, in shard order.  Outputs (atomic):

* ``manifest``: the shard manifests concatenated in shard order (TSV);
* ``rejected``: the shard rejected lists concatenated (a row repeated verbatim by
  several shards, e.g. a corrupt archive every shard streams, is kept once);
* ``summary``: JSON from :func:`nnpflow.io.manifest.summarize` -- counts, species
  (by atomic number), per-species atom counts, energy statistics, the filter
  settings and the ``structures_fingerprint`` that keys the split.  The
  fingerprint covers the filter settings (``max_energy``, ``atomic_energies``,
  the ingest stage's), exactly as the database's does: the merged database's
  ``structures_fingerprint`` equals it.

A label in two shards is an :class:`~nnpflow.errors.InputError` naming both.

The joined manifest has a last column ``energy_robust_z``
(:mod:`nnpflow.energy_outliers`); every structure whose score exceeds
``OUTLIER_Z`` in size gets a warning in the log (and is counted under
``energy_outliers`` in the summary).  They are kept: ``max_energy`` is the filter.
"""

from __future__ import annotations

import json
import logging

from ..energy_outliers import COLUMN, OUTLIER_Z, outliers, robust_z_scores
from ..energy_reference import EnergyFilter
from ..errors import InputError
from ..io.manifest import (read_manifest, read_rejected, summarize, write_manifest,
                           write_rejected)
from ..safe_write import write_json

log = logging.getLogger(__name__)


def read_summary(path: str, keys: tuple[str, ...]) -> dict:
    """The manifest summary ``path`` (``manifest.json``, written by :func:`run`) with
    the ``keys`` a reader needs; ``InputError`` naming the file when it cannot be
    read or lacks one of them."""
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
        missing = [k for k in keys if k not in info]
    except OSError as exc:
        raise InputError(f"cannot read the manifest summary: {exc.strerror}",
                         source=str(path)) from None
    except (ValueError, TypeError) as exc:
        raise InputError(f"not a manifest summary ({type(exc).__name__}: {exc})",
                         source=str(path)) from None
    if missing:
        raise InputError(f"not a manifest summary (no {', '.join(missing)})", source=str(path))
    return info


def run(shard_manifests: list[str], shard_rejected: list[str], manifest: str, summary: str,
        rejected: str, max_energy: float | None = None,
        atomic_energies: dict | None = None) -> None:
    """Concatenate shard manifests and rejected lists; write the summary JSON.

    ``max_energy`` (eV/atom) and ``atomic_energies`` (eV per species): the filter
    settings the ingest stage applied (they enter the structures fingerprint).
    """
    filter_meta = EnergyFilter(max_energy, atomic_energies).config()
    rows: list[dict] = []
    where: dict[str, str] = {}
    for path in shard_manifests:
        for row in read_manifest(path):
            first = where.get(row["label"])
            if first is not None:
                raise InputError(f"label {row['label']!r} appears in two shard manifests: "
                                 f"{first} and {path}", source=str(path))
            where[row["label"]] = str(path)
            rows.append(row)
    rejections: list[dict] = []
    seen = set()
    for path in shard_rejected:
        for row in read_rejected(path):
            key = (row["label"], row["reason"])
            if key not in seen:
                seen.add(key)
                rejections.append(row)
    info = summarize(rows, n_rejected=len(rejections), filter_meta=filter_meta)
    info["energy_outliers"] = flag_energy_outliers(rows, atomic_energies)
    write_manifest(manifest, rows, optional=(COLUMN,))
    write_rejected(rejected, rejections)
    write_json(summary, info)
    log.info("manifest: %d structures (%d atoms, species %s) from %d shards, %d rejected",
             info["n_structures"], info["n_atoms"], " ".join(info["species"]),
             len(shard_manifests), len(rejections))


def flag_energy_outliers(rows: list[dict], atomic_energies: dict | None = None,
                         max_warnings: int = 50) -> dict:
    """Add the ``energy_robust_z`` column to ``rows`` (in place), log a warning per
    outlier (at most ``max_warnings`` lines, then a count) and return
    ``{"robust_z_threshold", "n", "labels"}`` for the summary."""
    scores = robust_z_scores(rows, atomic_energies)
    for row, z in zip(rows, scores):
        row[COLUMN] = "" if z is None else f"{z:.4g}"
    found = outliers(rows, scores)
    for label, per_atom, z in found[:max_warnings]:
        log.warning("manifest: %s: energy %.6g eV/atom is an outlier (robust z-score %.3g, "
                    "|z| > %g): check its units and reference; kept (max_energy is the "
                    "filter)", label, per_atom, z, OUTLIER_Z)
    if len(found) > max_warnings > 0:
        log.warning("manifest: %d more energy outliers (column %s of the manifest)",
                    len(found) - max_warnings, COLUMN)
    return {"robust_z_threshold": OUTLIER_Z, "n": len(found),
            "labels": [label for label, _, _ in found[:100]]}
