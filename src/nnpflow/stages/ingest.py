"""Stage ``ingest``: read one shard's structures, check them, write its manifest.

Called by the workflow's ``ingest`` rule once per shard (``shard`` of
``n_shards``).  Plain files are assigned to shards by ``shard_of(path)`` when the
DAG is built and only this shard's files are passed in; archives are passed to
every shard, which keeps the members whose ``shard_of(archive:member)`` is its
index.  The stage checks ``shard_of(unit_label)`` for every unit either way.

Outputs (always written, atomically):

* ``manifest``: TSV, one row per accepted structure in canonical order (specs
  sorted by path, archive members in archive order); columns in
  :mod:`nnpflow.io.manifest`.
* ``rejected``: TSV ``label, reason`` -- bad sources or structures under
  ``on_error="skip"``, and structures the ``max_energy`` filter removes (those
  are not errors, also under ``on_error="raise"``).
* ``structures`` (optional): the accepted structures themselves, in the
  manifest's order, as a database without features
  (:func:`nnpflow.database.write_database`) recording the sources (paths,
  content hashes) and the filter settings.  The build stage featurises it, so a
  descriptor change never reads the sources again.

The structures stream through the database writer (memory bounded by one
block); the TSVs are written after it finished.  With ``on_error="raise"`` the
first :class:`~nnpflow.errors.InputError` propagates and nothing is written.
"""

from __future__ import annotations

import logging
from typing import Iterator

from ..energy_reference import EnergyFilter
from ..errors import ConfigError, InputError
from ..io.manifest import manifest_row, write_manifest, write_rejected
from ..sharding import shard_of
from ..sources import Rejection, SourceSpec, collection_for
from ..structure import Structure
from ..structure_checks import StructureChecks

log = logging.getLogger(__name__)


def _sources_meta(specs: list[SourceSpec], require_energy: bool, on_error: str) -> dict:
    """``{"content_hashes": {path: sha256}, "sources": [describe dicts]}`` of the
    shard's sources.  Under ``on_error="skip"`` an unreadable file is left out here;
    reading it records the rejection."""
    hashes: dict[str, str] = {}
    described: list[dict] = []
    for spec in specs:
        collection = spec.collection(require_energy)
        described.extend(collection.describe())
        try:
            hashes.update(collection.content_hashes())
        except InputError:
            if on_error != "skip":
                raise
    return {"content_hashes": hashes, "sources": described}


def run(specs: list[dict], shard: int, n_shards: int, manifest: str, rejected: str,
        structures: str | None = None,
        species: list[str] | None = None, atomic_energies: dict | None = None,
        max_energy: float | None = None, min_cutoff: float | None = None,
        on_error: str = "raise", require_energy: bool = True) -> None:
    """Ingest the structures of ``specs`` (``SourceSpec.to_dict()`` dicts) in shard
    ``shard`` of ``n_shards``; write ``manifest`` and ``rejected`` (TSV) and, when
    given, ``structures`` (HDF5 database without features, manifest order).

    ``species``: allowed species (others are rejected); ``min_cutoff`` (Å): reject
    structures with two atoms this close or closer; ``max_energy`` (eV/atom) with
    ``atomic_energies`` (eV per species): the referenced-energy filter of aenet's
    PyTorch training (aenet-python's torch_training docs);
    ``require_energy``: structures without a total energy are bad input.
    """
    if not isinstance(n_shards, int) or n_shards < 1:
        raise ConfigError(f"n_shards must be an integer >= 1, got {n_shards!r}")
    if not isinstance(shard, int) or not 0 <= shard < n_shards:
        raise ConfigError(f"shard must be in 0..{n_shards - 1}, got {shard!r}")
    parsed = sorted((SourceSpec.from_dict(d) if not isinstance(d, SourceSpec) else d
                     for d in specs), key=lambda s: s.path)
    checks = StructureChecks(species, min_cutoff)
    energy_filter = EnergyFilter(max_energy, atomic_energies)
    rejections: list[Rejection] = []
    rows: list[dict] = []
    n_filtered = 0
    sources_meta: dict = {}

    def accepted() -> Iterator[Structure]:
        nonlocal n_filtered
        if not parsed:
            return
        found = collection.iter_structures(
            on_error=on_error, rejected=rejections,
            select=lambda unit: shard_of(unit, n_shards) == shard,
            check=checks if checks else None)
        for s in found:
            reason = energy_filter.reason_to_reject(s)
            if reason is not None:
                rejections.append(Rejection(s.name, f"{s.name}: filtered: {reason}"))
                n_filtered += 1
                continue
            rows.append(manifest_row(s))
            yield s

    if parsed:
        collection = collection_for(parsed, require_energy=require_energy)
        if structures is not None:
            sources_meta = _sources_meta(parsed, require_energy, on_error)
    if structures is not None:
        from ..database import write_database
        write_database(structures, accepted(), sources_meta=sources_meta,
                       filter_meta=energy_filter.config())
    else:
        for _ in accepted():
            pass
    write_manifest(manifest, rows)
    write_rejected(rejected, rejections)
    log.info("ingest shard %d/%d: %d sources, %d structures accepted, %d rejected "
             "(%d by max_energy)", shard, n_shards, len(parsed), len(rows), len(rejections),
             n_filtered)
