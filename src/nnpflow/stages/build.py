"""Stage ``build``: featurise one shard's raw structures into a database shard.

Input ``structures`` is the ingest stage's raw-structure shard database (the
database schema without features).  The output shard holds the same structures
in the same order, with the descriptor's features and, for structures with
forces, the compact descriptor derivatives, as ``database_cfg`` asks.  The
sources and filter settings recorded by ingest are carried over, so the shard's
structures fingerprint equals the raw shard's.  Written atomically.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from ..database import DatabaseReader, write_database
from ..errors import ConfigError, InputError
from ..runtime import configure_threads
from .species import inferred_species, read_species_file

log = logging.getLogger(__name__)

#: database config keys this stage uses (``shards`` is the workflow's shard count,
#: used when the DAG is built; ``device`` where the descriptor computes)
DATABASE_KEYS = ("persist_features", "persist_force_derivatives", "compression",
                 "compression_level", "dtype", "block_structures", "shards", "device")


def database_options(database_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``write_database`` keyword arguments from the workflow's ``database`` block
    (unknown keys raise ``ConfigError``)."""
    cfg = dict(database_cfg or {})
    unknown = sorted(set(cfg) - set(DATABASE_KEYS))
    if unknown:
        raise ConfigError(f"database config: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(DATABASE_KEYS)}")
    opts = {"persist_features": bool(cfg.get("persist_features", True)),
            "persist_force_derivatives": bool(cfg.get("persist_force_derivatives", True)),
            "compression": cfg.get("compression", "gzip"),
            "compression_level": cfg.get("compression_level"),
            "dtype": cfg.get("dtype", "float32")}
    if "block_structures" in cfg:
        opts["block_structures"] = int(cfg["block_structures"])
    return opts


def build_device(database_cfg: Mapping[str, Any] | None) -> str:
    """Where the descriptor computes: the ``database`` block's ``device``
    (``cpu``, ``cuda`` or ``auto``; default ``cpu``).  Features are computed in
    float64 on either device and stored in the database's dtype."""
    return str(dict(database_cfg or {}).get("device") or "cpu")


def make_descriptor(descriptor: Mapping[str, Any], species: list[str], device: str = "cpu"):
    """``ChebyshevDescriptor`` from the workflow's ``descriptor`` block and species,
    computing on ``device``."""
    from ..descriptors import ChebyshevDescriptor
    cfg = dict(descriptor or {})
    given = cfg.pop("species", None)
    if given is not None and list(given) != list(species):
        raise ConfigError(f"descriptor species {list(given)} differ from the run's species "
                          f"{list(species)}")
    if not species:
        raise ConfigError("the build stage needs the species list")
    return ChebyshevDescriptor(species=list(species), device=device, **cfg)


def run(structures: str, database: str, descriptor: dict, database_cfg: dict,
        species: list[str] | None = None, threads: int = 1,
        manifest_summary: str | None = None, species_file: str | None = None) -> dict:
    """Featurise the raw shard ``structures`` into ``database``.

    ``descriptor``: ``{rad_order, rad_cutoff, ang_order, ang_cutoff, min_cutoff}``
    (Å); ``species``: the descriptor's species in order, or ``None`` to take
    them from ``manifest_summary`` (the manifest stage's ``manifest.json``, every
    species of the whole data set by atomic number -- shards must agree);
    ``species_file``: the species stage's ``species.txt``, which ``species`` (the
    workflow reads it when it plans the job) must equal;
    ``database_cfg``: the ``database`` config block (persist_features,
    persist_force_derivatives, compression, compression_level, dtype, device;
    ``shards`` is ignored here); ``threads``: torch threads.  Returns
    ``{"n_structures", "seconds", "species"}``.
    """
    configure_threads(threads)
    if species_file is not None:
        listed = read_species_file(species_file)
        if species is None:
            species = listed
        elif list(species) != listed:
            raise ConfigError(f"the build job was planned with species {list(species)} but "
                              f"{species_file} lists {listed}; run snakemake again")
        log.info("species from %s: %s", species_file, " ".join(species))
    if species is None:
        if manifest_summary is None:
            raise ConfigError("the build stage needs species or the manifest summary to "
                              "infer them from")
        species = inferred_species(manifest_summary)
        log.info("species inferred from %s: %s", manifest_summary, " ".join(species))
    desc = make_descriptor(descriptor, species, device=build_device(database_cfg))
    opts = database_options(database_cfg)
    start = time.perf_counter()
    with DatabaseReader(structures, cache_size=0) as raw:
        if raw.has_features or raw.has_force_derivatives:
            log.info("%s already holds features; they are recomputed", structures)
        n = len(raw)
        write_database(database, raw.iter_structures(), descriptor=desc,
                       sources_meta=raw.sources, filter_meta=raw.filter,
                       shared_species=raw.layout.get("species_layout") == "shared", **opts)
    seconds = time.perf_counter() - start
    log.info("build: %d structures featurised into %s in %.1f s (%.1f structures/s)",
             n, database, seconds, n / seconds if seconds > 0 else float("nan"))
    return {"n_structures": n, "seconds": seconds, "species": list(species)}
