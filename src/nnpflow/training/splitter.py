"""Random splits of a processed data set into named parts (Enerzyme's Splitter).

``ratios`` gives one entry per part: a fraction in [0, 1] (a float), a number
of structures (an integer) or ``null`` for the part that takes every structure
the others leave.  Fractions become the nearest count of structures, an exact
half to the even neighbour (:func:`nnpflow.splitting.fraction_count`); when all
entries are fractions summing to 1 the last part takes the rounding remainder,
so no structure is lost.  Parts are disjoint; structures no part claims are
unused.

The split is a pure function of the data set's hash, the method, parts, ratios
and ``seed``; its key hashes all of them (the seed included, unlike Enerzyme's).
With ``save`` it is written to ``split_<key>.json`` in the processed-data folder,
and with ``preload`` a saved split of the same key is read back instead of
drawn again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import ConfigError, SchemaError
from ..safe_write import canonical_json, write_json
from ..splitting import fraction_count, partition

SPLIT_SCHEMA_VERSION = 1


def part_sizes(n: int, parts: list[str], ratios: list) -> dict[str, int]:
    """Number of structures per part for ``n`` structures."""
    sizes: dict[str, int | None] = {}
    fractional = all(isinstance(r, float) for r in ratios)
    for k, (part, r) in enumerate(zip(parts, ratios)):
        if r is None:
            sizes[part] = None
        elif isinstance(r, float):
            sizes[part] = fraction_count(r, n)
        else:
            sizes[part] = int(r)
    if fractional and abs(sum(ratios) - 1.0) < 1e-9:
        last = parts[-1]
        sizes[last] = n - sum(v for p, v in sizes.items() if p != last)
    fixed = sum(v for v in sizes.values() if v is not None)
    if fixed > n:
        raise ConfigError(f"Trainer.Splitter.ratios {ratios} ask for {fixed} structures but the "
                          f"data set has {n}")
    for part, v in sizes.items():
        if v is None:
            sizes[part] = n - fixed
    if sizes["training"] < 1:
        raise ConfigError(f"Trainer.Splitter: the training part is empty ({n} structures, "
                          f"ratios {ratios})")
    return sizes  # type: ignore[return-value]


def random_split(n: int, parts: list[str], ratios: list, seed: int) -> dict[str, np.ndarray]:
    """Disjoint sorted index arrays per part, drawn with ``numpy.random.default_rng(seed)``
    (:func:`nnpflow.splitting.partition`, parts in the given order)."""
    sizes = part_sizes(n, parts, ratios)
    return partition(n, {part: sizes[part] for part in parts}, seed)


def split_key(data_hash: str, splitter: Mapping) -> str:
    """SHA-256 over the data hash and every setting that changes the split (seed included)."""
    payload = {"schema": SPLIT_SCHEMA_VERSION, "data": data_hash, "method": splitter["method"],
               "parts": list(splitter["parts"]), "ratios": list(splitter["ratios"]),
               "seed": int(splitter["seed"])}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def load_or_make_split(directory: Path, data_hash: str, n: int, splitter: Mapping,
                       logger: logging.Logger | None = None
                       ) -> tuple[dict[str, np.ndarray], str, bool]:
    """The split for ``splitter`` (resolved Trainer.Splitter): ``(indices, key, reused)``."""
    log = logger or logging.getLogger(__name__)
    key = split_key(data_hash, splitter)
    path = Path(directory) / f"split_{key[:16]}.json"
    if splitter["preload"] and path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SchemaError(f"{path}: unreadable saved split ({exc})") from None
        if saved.get("key") != key or saved.get("schema_version") != SPLIT_SCHEMA_VERSION:
            raise SchemaError(f"{path}: saved split does not match its key; delete the file")
        indices = {p: np.asarray(saved["indices"][p], dtype=np.int64) for p in splitter["parts"]}
        if any(len(v) and (v.min() < 0 or v.max() >= n) for v in indices.values()):
            raise SchemaError(f"{path}: saved split indexes beyond the {n} structures")
        log.info("split: reused %s (%s)", path.name,
                 ", ".join(f"{p} {len(v)}" for p, v in indices.items()))
        return indices, key, True
    indices = random_split(n, list(splitter["parts"]), list(splitter["ratios"]),
                           int(splitter["seed"]))
    log.info("split: drew %s with seed %d (%s)",
             f"and saved {path.name}" if splitter["save"] else "a split (not saved)",
             splitter["seed"], ", ".join(f"{p} {len(v)}" for p, v in indices.items()))
    if splitter["save"]:
        write_json(path, {"schema_version": SPLIT_SCHEMA_VERSION, "key": key,
                          "data_hash": data_hash, "method": splitter["method"],
                          "parts": list(splitter["parts"]), "ratios": list(splitter["ratios"]),
                          "seed": int(splitter["seed"]),
                          "indices": {p: v.tolist() for p, v in indices.items()}}, indent=None)
    return indices, key, False
