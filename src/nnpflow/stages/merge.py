"""Stage ``merge``: shard databases -> the training database and its summary.

Writes ``database`` (shards' parts copied in shard order, statistics combined
exactly, fingerprints recomputed) and ``summary``, a JSON file with the
fingerprints, counts, species, descriptor, layout, sizes and statistics that
later rules (split, train, report) read without opening the HDF5 file.
Both atomically.
"""

from __future__ import annotations

import logging

from ..database import database_info, merge_databases
from ..safe_write import write_json

log = logging.getLogger(__name__)


def run(shards: list[str], database: str, summary: str) -> dict:
    """Merge ``shards`` (in order) into ``database``; write ``summary`` (JSON).

    Returns the summary dict.
    """
    if isinstance(shards, str):
        shards = [shards]
    merge_databases(list(shards), database)
    info = database_info(database)
    info["shards"] = [str(s) for s in shards]
    write_json(summary, info)
    log.info("merge: %d shards -> %s: %d structures, %d atoms, species %s, fingerprint %s",
             len(shards), database, info["n_structures"], info["n_atoms"],
             ", ".join(info["species"]), info["fingerprint"][:16])
    return info
