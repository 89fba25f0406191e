"""A merged database as an index over its shard files (HDF5 external links).

The workflow keeps its shards (a rerun rebuilds only the shards whose inputs
changed), so a merged database that copied their arrays would hold every byte
twice.  Instead, :func:`~nnpflow.database.merge.merge_databases` with
``link=True`` writes an *index*: the root attributes of a merged database
(counts, statistics, fingerprints, ...) and, for each part ``/parts/<k>``, an
HDF5 external link to the shard's part.  h5py follows those links
transparently, so every reader sees the same groups and datasets as in a
copied database; only the root attribute ``linked_parts`` tells them apart.

Links name their shard by a path *relative to the index file's folder*, which
HDF5 resolves against the folder of the index file when it is opened: a folder
holding the index and its shards can be moved or copied as a whole.  The
index records each shard's ``fingerprint`` and counts; on open,
:func:`check_linked_parts` refuses an index whose shard is missing or was
rebuilt with other content since the merge (a clear error instead of wrong
data).  ``nnpflow db merge INDEX -o COPY`` (a copying merge follows the links)
makes a self-contained copy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py

from ..errors import SchemaError

__all__ = ["LINKS_ATTR", "link_target", "linked_parts", "check_linked_parts", "linked_files"]

#: root attribute of an index database: JSON list of one dict per part with
#: ``part`` (index k of /parts/k), ``file`` (shard path relative to the index's
#: folder), ``group`` (the part's group in the shard), ``fingerprint`` (the
#: shard's ``fingerprint`` attribute at merge time), ``n_structures``, ``n_atoms``
LINKS_ATTR = "linked_parts"


def link_target(shard: str | os.PathLike, index: str | os.PathLike) -> str:
    """Path of ``shard`` relative to the folder of the index file ``index``
    (POSIX separators), as stored in the external links."""
    folder = os.path.dirname(os.path.abspath(index))
    return Path(os.path.relpath(os.path.abspath(shard), folder)).as_posix()


def linked_parts(h5: h5py.File) -> list[dict[str, Any]] | None:
    """The ``linked_parts`` entries of an open database, or ``None`` for a
    self-contained one."""
    raw = h5.attrs.get(LINKS_ATTR)
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode()
    return json.loads(raw)


def linked_files(path: str | os.PathLike, entries: list[dict[str, Any]] | None) -> list[Path]:
    """Absolute paths of the distinct shard files an index links to."""
    if not entries:
        return []
    folder = Path(os.path.abspath(path)).parent
    out: list[Path] = []
    for e in entries:
        p = folder / e["file"]
        if p not in out:
            out.append(p)
    return out


def check_linked_parts(h5: h5py.File, path: str | os.PathLike) -> None:
    """Refuse (``SchemaError``) an index database whose shard files are missing,
    unreadable or changed since the merge.  Does nothing for a self-contained
    database."""
    try:
        entries = linked_parts(h5)
    except ValueError:
        raise SchemaError(f"{path}: malformed {LINKS_ATTR} attribute") from None
    if entries is None:
        return
    folder = Path(os.path.abspath(path)).parent
    fingerprints: dict[str, str] = {}
    for e in entries:
        try:
            rel, group, expected = str(e["file"]), str(e["group"]), str(e["fingerprint"])
            n_expected = int(e["n_structures"])
        except (KeyError, TypeError, ValueError):
            raise SchemaError(f"{path}: malformed {LINKS_ATTR} entry {e!r}") from None
        shard = folder / rel
        if not shard.is_file():
            raise SchemaError(
                f"{path}: this database is an index over shard files and its shard {rel} "
                f"({shard}) is missing; keep the shards beside it (move or copy the folder "
                "as a whole), rebuild them, or make a self-contained copy with "
                "`nnpflow db merge INDEX -o COPY` while they exist")
        if rel not in fingerprints:
            try:
                with h5py.File(shard, "r") as sh:
                    fingerprints[rel] = str(sh.attrs.get("fingerprint", ""))
                    n_found = int(sh[group].attrs["n_structures"])
            except (OSError, KeyError) as exc:
                raise SchemaError(f"{path}: its shard {rel} is not a readable database "
                                  f"with part {group} ({exc})") from None
        else:
            n_found = n_expected
        if fingerprints[rel] != expected or n_found != n_expected:
            raise SchemaError(
                f"{path}: its shard {rel} changed since the merge (fingerprint "
                f"{fingerprints[rel][:16]}... vs {expected[:16]}... recorded); rerun the merge "
                "(the workflow's merge rule) to index the current shards")
