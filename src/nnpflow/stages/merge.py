"""Stage ``merge``: shard databases -> the training database and its summary.

Writes ``database`` (an index over the shards: their parts linked in shard
order with HDF5 external links, no array copied, statistics combined exactly,
fingerprints recomputed; see :mod:`nnpflow.database.links`) and ``summary``, a JSON file with the
fingerprints, counts, species, descriptor, layout, sizes and statistics that
later rules (split, train, report) read without opening the HDF5 file.
Both atomically.

With ``manifest_summary`` (the manifest stage's ``manifest.json``) the merged
database must hold exactly the manifest's structures in the manifest's order
under the same filter settings: its ``structures_fingerprint`` must equal the
manifest's, or the stage fails (and writes nothing).  So the split, which is
drawn from the manifest, always indexes the database correctly.
"""

from __future__ import annotations

import json
import logging

from ..database import database_info, merge_databases
from ..errors import InputError
from ..safe_write import atomic_path, write_json

log = logging.getLogger(__name__)


def run(shards: list[str], database: str, summary: str,
        manifest_summary: str | None = None, link: bool = True) -> dict:
    """Merge ``shards`` (in order) into ``database``; write ``summary`` (JSON).

    ``manifest_summary``: ``manifest.json`` whose structures fingerprint the
    database must reproduce (checked when given).  ``link``: write an index over
    the shards (the workflow keeps its shards, so the data is on disk once);
    ``False`` copies them into a self-contained database.  Returns the summary
    dict.
    """
    if isinstance(shards, str):
        shards = [shards]
    expected = None
    if manifest_summary is not None:
        try:
            with open(manifest_summary, encoding="utf-8") as fh:
                expected = str(json.load(fh)["structures_fingerprint"])
        except OSError as exc:
            raise InputError(f"cannot read the manifest summary: {exc.strerror}",
                             source=str(manifest_summary)) from None
        except (ValueError, KeyError, TypeError):
            raise InputError("not a manifest summary (no structures_fingerprint)",
                             source=str(manifest_summary)) from None
    # merged into a temporary file and checked there: a database that does not match
    # the manifest never appears at the final path, not even for a moment
    with atomic_path(database) as tmp:
        merge_databases(list(shards), tmp, link=link)
        info = database_info(tmp)
        if expected is not None and info["structures_fingerprint"] != expected:
            raise InputError(
                f"the merged shards hold other structures than the manifest (structures "
                f"fingerprint {info['structures_fingerprint'][:16]}... vs "
                f"{expected[:16]}...): shards and manifest come from different ingest runs; "
                "rerun ingest and build", source=str(manifest_summary))
    info["path"] = str(database)
    info["shards"] = [str(s) for s in shards]
    write_json(summary, info)
    log.info("merge: %d shards -> %s: %d structures, %d atoms, species %s, fingerprint %s",
             len(shards), database, info["n_structures"], info["n_atoms"],
             ", ".join(info["species"]), info["fingerprint"][:16])
    return info
