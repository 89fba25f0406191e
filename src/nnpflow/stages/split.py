"""Stage ``split``: the training/validation/test split of the ingested structures.

Input is the manifest stage's summary (``manifest.json``: ``n_structures`` and
``structures_fingerprint``), so the split depends on the structures only --
never on the descriptor or the database settings, and a descriptor change keeps
it.  Output ``split`` is ``split.json`` (:mod:`nnpflow.splitting`): sorted
0-based indices per part into the manifest's order (= the database's order),
the structures fingerprint they belong to, the seed and the settings.
Written atomically.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..errors import InputError
from ..splitting import make_split, sizes_summary, write_split

log = logging.getLogger(__name__)


def run(manifest_summary: str, split: str, validation: Any = 0.1, test: Any = 0.1,
        seed: int = 42) -> dict:
    """Draw the split for the structures of ``manifest_summary``; write ``split``.

    ``validation``, ``test``: fractions in [0, 1) or counts >= 1 (``train`` gets
    the rest); ``seed``: seed of the permutation.  Returns the counts per part.
    """
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
    result = make_split(n, validation, test, seed, fingerprint)
    write_split(split, result)
    log.info("split: %d structures (fingerprint %s...) with seed %d: %s", n, fingerprint[:16],
             int(seed), sizes_summary(result))
    return result.counts
