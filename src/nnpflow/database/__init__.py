"""The nnpflow HDF5 training database.

Public API:

* :func:`write_database` / :class:`DatabaseWriter` — stream structures (and,
  with a descriptor, their features and compact force derivatives) into a new
  file, written atomically with memory bounded by one block;
* :class:`DatabaseReader` — lazy, read-only, per-process handles (fork and
  DataLoader-worker safe), block decoding with an LRU cache, exact subset
  feature statistics;
* :func:`merge_databases` — shards into one database (compressed chunks copied
  as they are), with exactly combined statistics;
* :func:`database_info` — a JSON-compatible summary;
* :func:`nnpflow.database.build.build_sharded` — the parallel sharded build
  (import it from its module; it starts worker processes).

The schema is documented in :mod:`nnpflow.database.schema` and
``docs/database.md``.
"""

from __future__ import annotations

from .fingerprint import StructuresFingerprint, database_fingerprint, structures_fingerprint
from .merge import merge_databases
from .reader import Block, DatabaseReader, DerivativeBlock, database_info
from .schema import SCHEMA_VERSION
from .statistics import DatabaseStatistics, Moments
from .writer import DatabaseWriter, DescriptorMeta, write_database

__all__ = ["write_database", "DatabaseWriter", "DescriptorMeta", "DatabaseReader", "Block",
           "DerivativeBlock", "merge_databases", "database_info", "SCHEMA_VERSION",
           "StructuresFingerprint", "structures_fingerprint", "database_fingerprint",
           "DatabaseStatistics", "Moments"]
