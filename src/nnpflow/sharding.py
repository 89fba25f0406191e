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


def unit_label(label: str, frame: int | None = None) -> str:
    """The label of the unit (file or archive member) a structure came from.

    With ``frame`` (the structure's frame index in a multi-frame source) the
    trailing ``@frame`` is stripped: ``unit_label("a.xyz@3", 3) == "a.xyz"``.
    Without it, a trailing ``@<digits>`` is taken for a frame index; pass the
    frame whenever it is known, so that a file whose own name ends in
    ``@<digits>`` keeps its name.
    """
    if frame is not None:
        suffix = f"@{int(frame)}"
        return label[:-len(suffix)] if label.endswith(suffix) else label
    head, sep, tail = label.rpartition("@")
    return head if sep and tail.isdigit() else label
