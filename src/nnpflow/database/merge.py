"""Merge shard databases into one database.

Every shard's part (row group) is copied into the output as its own part with
HDF5's object copy, which moves the compressed chunks as they are, chunk by
chunk: no decompression, no recompression, memory bounded by one chunk.  With
``link=True`` nothing is copied: each part of the output is an HDF5 external
link to the shard's part and the output is an *index* over the shards (see
:mod:`nnpflow.database.links`), which is what the workflow writes, as it keeps
its shards.  The
structures of the merged database are the shards' in the order given (shard 0
first), each shard's in its own order.  Statistics combine exactly from the
shards' moments; the structures fingerprint is recomputed over the merged
order; sources and their content hashes are united.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py

from .. import __version__
from ..errors import ConfigError, DescriptorMismatchError
from ..safe_write import atomic_path, canonical_json, strict_json
from ..structure import atomic_number
from .fingerprint import StructuresFingerprint, database_fingerprint
from .links import LINKS_ATTR, link_target, linked_parts
from .reader import DatabaseReader
from .schema import FORMAT, PARTS, SCHEMA_VERSION
from .statistics import DatabaseStatistics

#: layout entries that must agree between shards
_SAME_LAYOUT = ("features", "force_derivatives", "descriptor", "dtype", "n_features",
                "feature_species")


def merge_sources_meta(metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Unite shards' ``sources`` metadata.

    ``content_hashes`` dicts are united (the same path with two hashes is an
    error); ``sources`` lists are concatenated without duplicates; any other key
    keeps its value when all shards agree, else the list of distinct values.
    """
    hashes: dict[str, str] = {}
    sources: list[Any] = []
    seen: set[str] = set()
    other: dict[str, list[Any]] = {}
    for meta in metas:
        for path, digest in (meta.get("content_hashes") or {}).items():
            if path in hashes and hashes[path] != digest:
                raise ConfigError(f"source {path} has different content hashes in two shards "
                                  f"({hashes[path][:12]}..., {digest[:12]}...): it changed "
                                  "between shard builds; rebuild the shards")
            hashes[path] = digest
        for entry in meta.get("sources") or []:
            key = canonical_json(entry)
            if key not in seen:
                seen.add(key)
                sources.append(entry)
        for key, value in meta.items():
            if key in ("content_hashes", "sources"):
                continue
            values = other.setdefault(key, [])
            if all(canonical_json(v) != canonical_json(value) for v in values):
                values.append(value)
    out: dict[str, Any] = {}
    if hashes:
        out["content_hashes"] = {k: hashes[k] for k in sorted(hashes)}
    if sources:
        out["sources"] = sources
    for key, values in other.items():
        out[key] = values[0] if len(values) == 1 else values
    return out


def _check_compatible(readers: Sequence[DatabaseReader]) -> None:
    first = readers[0]
    for r in readers[1:]:
        if r.descriptor_sha256 != first.descriptor_sha256:
            raise DescriptorMismatchError(
                f"cannot merge {r.path} into {first.path}: descriptor SHA-256 "
                f"{r.descriptor_sha256} differs from {first.descriptor_sha256}")
        for key in _SAME_LAYOUT:
            if r.layout.get(key) != first.layout.get(key):
                raise ConfigError(f"cannot merge {r.path} with {first.path}: layout {key!r} "
                                  f"is {r.layout.get(key)!r} vs {first.layout.get(key)!r}")
        if canonical_json(r.filter) != canonical_json(first.filter):
            raise ConfigError(f"cannot merge {r.path} with {first.path}: filter settings "
                              f"{r.filter} differ from {first.filter}")
    keys = {tuple(r.layout.get("derivative_keys") or []) for r in readers} - {()}
    if len(keys) > 1:
        raise ConfigError(f"cannot merge: shards store different derivative arrays {sorted(keys)}")


def merge_databases(shard_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike, *,
                    show_progress: bool = False, link: bool = False,
                    into_first: bool = False) -> Path:
    """Merge ``shard_paths`` (in this order) into a new database ``out_path``.

    The shards must share the descriptor, persisted content, dtype and filter
    settings (:class:`~nnpflow.errors.DescriptorMismatchError` /
    :class:`~nnpflow.errors.ConfigError` otherwise).  Written atomically;
    returns ``out_path``.

    ``link=False`` copies the shards' parts: the output is self-contained (an
    index given as a shard is copied too, its links followed).  ``link=True``
    writes an index over the shards instead (external links by paths relative
    to ``out_path``'s folder, no data copied; :mod:`nnpflow.database.links`):
    the shards must stay beside it, and a reader refuses the index once a shard
    is missing or rebuilt with other content.

    ``into_first=True`` (copying merge of temporary shards, as in
    ``build_sharded``): the first shard's file is moved to become the output
    and only the other shards' parts are copied into it, so the first shard's
    path is gone afterwards (also when the merge fails).  It must be on the
    same file system as ``out_path``.
    """
    if not shard_paths:
        raise ConfigError("merge_databases needs at least one shard")
    readers = [DatabaseReader(p, cache_size=0) for p in shard_paths]
    try:
        _check_compatible(readers)
        if link:
            for r in readers:
                if linked_parts(r._file()) is not None:
                    raise ConfigError(f"cannot link to {r.path}: it is itself an index over "
                                      "shards; link to its shards, or merge with link=False")
        first = readers[0]
        stats = DatabaseStatistics.from_dict(first.statistics)
        for r in readers[1:]:
            stats = stats.merge(DatabaseStatistics.from_dict(r.statistics))
        fp = StructuresFingerprint()
        for r in readers:
            for label, digest in r.iter_labels():
                fp.add(label, digest)
        structures_fp = fp.hexdigest(first.filter)
        progress = None
        if show_progress:
            from tqdm.auto import tqdm
            progress = tqdm(total=sum(len(r) for r in readers), unit="structure",
                            desc=f"merging into {Path(out_path).name}")
        n_parts = 0
        layouts_shared: list[bool] = []
        compressions: set[tuple] = set()
        derivative_keys: list[str] = []
        links: list[dict] = []
        # the first shard's file becomes the output: only the others are copied
        reuse = (into_first and not link and len(readers) > 1
                 and [p.n > 0 for p in first._load_parts()] == [True]
                 and linked_parts(first._file()) is None)
        try:
            with atomic_path(out_path) as tmp:
                if reuse:
                    first.close()
                    os.replace(first.path, tmp)
                with h5py.File(tmp, "a" if reuse else "w", libver="latest") as out:
                    out.attrs["format"] = FORMAT
                    out.attrs["schema_version"] = SCHEMA_VERSION
                    out.attrs["complete"] = False
                    parts = out[PARTS] if reuse else out.create_group(PARTS)
                    for r in readers:
                        compressions.add((r.layout.get("compression"),
                                          r.layout.get("compression_level")))
                        if reuse and r is first:    # its one part is /parts/0 already
                            part = r._load_parts()[0]
                            layouts_shared.append(part.species_layout == "shared")
                            derivative_keys = list(part.derivative_keys)
                            n_parts = 1
                            if progress is not None:
                                progress.update(part.n)
                            continue
                        h5 = r._file()
                        for part in r._load_parts():
                            if part.n == 0:
                                continue
                            if link:
                                target = link_target(r.path, tmp)
                                parts[str(n_parts)] = h5py.ExternalLink(target, part.name)
                                links.append({"part": n_parts, "file": target,
                                              "group": part.name, "fingerprint": r.fingerprint,
                                              "n_structures": part.n, "n_atoms": part.n_atoms})
                            else:
                                h5.copy(h5[part.name], parts, name=str(n_parts))
                            layouts_shared.append(part.species_layout == "shared")
                            derivative_keys = derivative_keys or list(part.derivative_keys)
                            n_parts += 1
                            if progress is not None:
                                progress.update(part.n)
                    layout = dict(first.layout)
                    layout["species_layout"] = ("shared" if layouts_shared and all(layouts_shared)
                                                else "per_atom")
                    layout["derivative_keys"] = derivative_keys
                    if len(compressions) > 1:
                        layout["compression"] = "mixed"
                        layout["compression_level"] = None
                    desc_sha = first.descriptor_sha256
                    stats_dict = stats.to_dict()
                    attrs = out.attrs
                    attrs["n_parts"] = n_parts
                    attrs["n_structures"] = stats.n_structures
                    attrs["n_atoms"] = stats.n_atoms
                    attrs["species"] = strict_json(sorted(stats_dict["species_counts"],
                                                           key=atomic_number), indent=None)
                    attrs["layout"] = canonical_json(layout)
                    if first.descriptor_config is not None:
                        attrs["descriptor"] = canonical_json(first.descriptor_config)
                        attrs["descriptor_sha256"] = desc_sha
                    attrs["sources"] = canonical_json(merge_sources_meta([r.sources
                                                                          for r in readers]))
                    attrs["filter"] = canonical_json(first.filter)
                    attrs["statistics"] = strict_json(stats_dict, indent=None)
                    attrs["structures_fingerprint"] = structures_fp
                    attrs["fingerprint"] = database_fingerprint(structures_fp, desc_sha, layout)
                    attrs["created_by"] = f"nnpflow {__version__}"
                    attrs["merged_from"] = strict_json([str(p) for p in shard_paths], indent=None)
                    if link:
                        attrs[LINKS_ATTR] = canonical_json(links)
                    attrs["complete"] = True
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
        finally:
            if progress is not None:
                progress.close()
    finally:
        for r in readers:
            r.close()
    return Path(out_path)
