"""Stage ``split``: the training/validation/test split of the ingested structures.

Inputs are the manifest stage's outputs: ``manifest.json`` (``n_structures`` and
``structures_fingerprint``) and ``manifest.tsv`` (each structure's label and
content hash), so the split depends on the structures only -- never on the
descriptor or the database settings, and a descriptor change keeps it.

``method="stable"`` (the default) decides each structure's part from a seeded
hash of its label and content (:func:`nnpflow.splitting.make_stable_split`):
adding or removing files never moves another structure to another part.
``method="permutation"`` draws one seeded permutation with exact part sizes
(:func:`nnpflow.splitting.make_split`).  Output ``split`` is ``split.json``
(:mod:`nnpflow.splitting`): sorted 0-based indices per part into the manifest's
order (= the database's order), the sizes and fractions reached, the structures
fingerprint they belong to, the seed and the settings.  Written atomically.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..errors import ConfigError, InputError
from ..io.manifest import read_manifest
from ..splitting import SPLIT_METHODS, make_split, make_stable_split, sizes_summary, write_split

log = logging.getLogger(__name__)


def run(manifest_summary: str, split: str, manifest: str | None = None,
        validation: Any = 0.1, test: Any = 0.1, seed: int = 42,
        method: str = "stable") -> dict:
    """Split the structures of ``manifest_summary`` / ``manifest``; write ``split``.

    ``validation``, ``test``: fractions in [0, 1) or counts >= 1 (``train`` gets
    the rest); ``seed``: seed of the draws; ``method``: ``stable`` (needs
    ``manifest``, the manifest TSV) or ``permutation``.  Returns the counts per part.
    """
    if method not in SPLIT_METHODS:
        raise ConfigError(f"split.method must be one of {', '.join(SPLIT_METHODS)}, "
                          f"got {method!r}")
    try:
        with open(manifest_summary, encoding="utf-8") as fh:
            info = json.load(fh)
        n = int(info["n_structures"])
        fingerprint = str(info["structures_fingerprint"])
    except OSError as exc:
        raise InputError(f"cannot read the manifest summary: {exc.strerror}",
                         source=str(manifest_summary)) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a manifest summary ({type(exc).__name__}: {exc})",
                         source=str(manifest_summary)) from None
    if method == "stable":
        if manifest is None:
            raise ConfigError("split.method stable needs the manifest (labels and content "
                              "hashes of the structures)")
        rows = read_manifest(manifest)
        if len(rows) != n:
            raise InputError(f"the manifest lists {len(rows)} structures, its summary "
                             f"{manifest_summary} {n}: they come from different runs",
                             source=str(manifest))
        result = make_stable_split([r["label"] for r in rows], [r["content_hash"] for r in rows],
                                   validation, test, seed, fingerprint)
    else:
        result = make_split(n, validation, test, seed, fingerprint)
    write_split(split, result)
    log.info("split (%s): %d structures (fingerprint %s...) with seed %d: %s", method, n,
             fingerprint[:16], int(seed), sizes_summary(result))
    return result.counts
