"""Stable assignment of structures to database shards.

A structure's shard is decided by its *unit label*: the source label without a
frame suffix (a file path, or ``archive:member``).  The assignment is a hash of
that string alone, so adding, removing or editing one source file changes the
contents of exactly one shard, whatever else is in the data set.
"""

from __future__ import annotations

import hashlib


def shard_of(unit_label: str, n_shards: int) -> int:
    """Shard index in ``range(n_shards)`` for a source unit label (stable across runs)."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    digest = hashlib.sha256(unit_label.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % n_shards


def unit_label(label: str) -> str:
    """Strip a trailing ``@frame`` from a structure label: ``a.xyz@3`` -> ``a.xyz``."""
    head, sep, tail = label.rpartition("@")
    return head if sep and tail.isdigit() else label
