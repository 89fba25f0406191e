"""Train/validation/test splits of a structure set, stored as files of indices.

A split is a pure function of the number of structures, the part sizes and a
seed: :func:`partition` draws one permutation with
``numpy.random.default_rng(seed)`` and hands out consecutive slices of it, part
by part, in the order the parts are given.  It is the one partition routine of
nnpflow; :mod:`nnpflow.training.splitter` (Enerzyme-style ``Trainer.Splitter``)
uses it too.

Two splits of the workflow (rule ``split``, ``split.method``):

* ``stable`` (the default, :func:`make_stable_split`): each structure's part is
  decided by itself alone -- a seeded SHA-256 of its label and content hash
  (:func:`structure_draw`, a number in [0, 1)) against the part fractions
  (test below ``f_test``, validation below ``f_test + f_validation``, train the
  rest).  Adding or removing structures never moves another structure to another
  part, the same seed and data give the same split on any machine, and the parts
  hold their fractions approximately (the split file reports the sizes reached).
  A count (an integer >= 1) is taken as that fraction of the current structures,
  so with counts the parts move a little when the data grow.  A part asked for
  (>= 1 structure by its fraction) that the draws leave empty -- only possible
  for a handful of structures -- gets the training structure with the smallest
  draw (a pure function of the data and the seed, like every other assignment);
  likewise an empty training part gets the structure with the largest draw.
* ``permutation`` (:func:`make_split`): one seeded permutation of all
  structures, drawn in the order ``test``, ``validation``, ``train``, with exact
  sizes; any added or removed structure redraws every part.

Either way a new ``seed`` redraws everything.  Sizes are fractions of the
structures (a number in [0, 1)) or counts (an integer >= 1); ``train`` takes
the rest.

``split.json`` (:func:`write_split` / :func:`load_split`)::

    {"format": "nnpflow-split", "schema_version": 1,
     "structures_fingerprint": "<sha256>",   # the manifest's and database's
     "n_structures": N, "seed": 42,
     "settings": {"validation": 0.1, "test": 0.1, "method": "stable"},
     "counts": {"train": .., "validation": .., "test": ..},
     "fractions": {"train": .., "validation": .., "test": ..},   # reached
     "atomic_energies_fit": null | {"atomic_energies": {species: eV}, ...},
     "indices": {"train": [...], "validation": [...], "test": [...]}}

Indices are 0-based positions in the manifest's order, which is the database's
order, sorted ascending within each part.  The file names the structures
fingerprint it was made for; :func:`load_split` refuses it for other structures
(:class:`SplitMismatchError`), so a model is never trained on a split of a
different data set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import ConfigError, SchemaError, SplitMismatchError
from .safe_write import write_json

__all__ = ["PARTS", "SPLIT_FORMAT", "SPLIT_SCHEMA_VERSION", "Split", "SplitMismatchError",
           "partition", "part_size", "make_split", "make_stable_split",
           "structure_draw", "SPLIT_METHODS", "write_split", "load_split", "sizes_summary"]

#: the workflow's parts, in the order they are stored
PARTS = ("train", "validation", "test")
#: the order in which :func:`make_split` draws the parts from the permutation
DRAW_ORDER = ("test", "validation", "train")
SPLIT_FORMAT = "nnpflow-split"
SPLIT_SCHEMA_VERSION = 1
#: ``split.method`` values: per-structure hash (stable) or one permutation
SPLIT_METHODS = ("stable", "permutation")


def partition(n: int, sizes: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint index arrays per part for ``n`` structures.

    ``sizes`` maps part names to counts (their sum at most ``n``; structures no
    part claims are unused); parts take consecutive slices of
    ``numpy.random.default_rng(seed).permutation(n)`` in ``sizes``' order.
    Returns ``{part: sorted int64 array}`` in the same order.
    """
    n = int(n)
    if n < 0:
        raise ConfigError(f"number of structures must be >= 0, got {n}")
    counts = {str(p): int(k) for p, k in sizes.items()}
    bad = {p: k for p, k in counts.items() if k < 0}
    if bad:
        raise ConfigError(f"part sizes must be >= 0, got {bad}")
    if sum(counts.values()) > n:
        raise ConfigError(f"the parts {counts} ask for {sum(counts.values())} structures "
                          f"but there are {n}")
    order = np.random.default_rng(int(seed)).permutation(n)
    out, start = {}, 0
    for part, k in counts.items():
        out[part] = np.sort(order[start:start + k]).astype(np.int64)
        start += k
    return out


def fraction_count(fraction: float, n: int) -> int:
    """The number of structures a ``fraction`` of ``n`` stands for: the nearest
    whole number, an exact half to the even neighbour (Python's ``round``).  The
    one rounding rule of every split (workflow, train.yaml's Splitter, the API's
    ``testpercent``)."""
    return int(round(float(fraction) * int(n)))


def part_size(value: Any, n: int, name: str = "part") -> int:
    """Structures in a part of ``n``: ``value`` in [0, 1) is a fraction (rounded to
    the nearest count, :func:`fraction_count`), an integral number >= 1 a count."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"split.{name} must be a fraction in [0, 1) or a count >= 1, "
                          f"got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"split.{name} must be a fraction in [0, 1) or a count >= 1, "
                          f"got {value!r}")
    if v < 1:
        return fraction_count(v, n)
    if v != int(v):
        raise ConfigError(f"split.{name} = {value!r}: a number >= 1 is a count of "
                          "structures and must be a whole number (fractions are below 1)")
    return int(v)


@dataclass(frozen=True)
class Split:
    """Indices per part (int64 arrays, 0-based, sorted) and what they were made for."""

    indices: dict[str, np.ndarray]
    structures_fingerprint: str
    n_structures: int
    seed: int
    settings: dict = field(default_factory=dict)
    #: reference energies fitted on the training part (``atomic_energies: fit``), else None
    atomic_energies_fit: dict | None = None

    @property
    def train(self) -> np.ndarray:
        return self.indices["train"]

    @property
    def validation(self) -> np.ndarray:
        return self.indices["validation"]

    @property
    def test(self) -> np.ndarray:
        return self.indices["test"]

    @property
    def counts(self) -> dict[str, int]:
        return {p: int(len(v)) for p, v in self.indices.items()}

    @property
    def fractions(self) -> dict[str, float]:
        """The fraction of the structures in each part (what the split reached)."""
        n = max(int(self.n_structures), 1)
        return {p: round(len(v) / n, 6) for p, v in self.indices.items()}

    def to_dict(self) -> dict:
        """The JSON form written to ``split.json``."""
        return {"format": SPLIT_FORMAT, "schema_version": SPLIT_SCHEMA_VERSION,
                "structures_fingerprint": self.structures_fingerprint,
                "n_structures": int(self.n_structures), "seed": int(self.seed),
                "settings": dict(self.settings), "counts": self.counts,
                "fractions": self.fractions,
                "atomic_energies_fit": self.atomic_energies_fit,
                "indices": {p: self.indices[p].tolist() for p in PARTS}}


def make_split(n_structures: int, validation: Any, test: Any, seed: int,
               structures_fingerprint: str) -> Split:
    """The workflow's split of ``n_structures`` structures (see the module docstring).

    ``validation`` and ``test``: fractions in [0, 1) or counts; ``train`` gets
    the rest and must not be empty.
    """
    n = int(n_structures)
    n_val = part_size(validation, n, "validation")
    n_test = part_size(test, n, "test")
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ConfigError(f"split: validation ({validation!r} -> {n_val}) and test "
                          f"({test!r} -> {n_test}) leave {max(n_train, 0)} of {n} structures "
                          "for training; make them smaller")
    drawn = partition(n, {"test": n_test, "validation": n_val, "train": n_train}, seed)
    return Split(indices={p: drawn[p] for p in PARTS},
                 structures_fingerprint=str(structures_fingerprint), n_structures=n,
                 seed=int(seed), settings={"validation": validation, "test": test,
                                           "method": "permutation"})


def structure_draw(label: str, content_hash: str, seed: int) -> float:
    """The stable split's draw of one structure: a number in [0, 1).

    The first 8 bytes (big-endian) of the SHA-256 of ``seed``, ``label`` and
    ``content_hash`` (UTF-8), divided by 2**64: the same on every machine and
    independent of every other structure.
    """
    key = f"nnpflow-split\0{int(seed)}\0{label}\0{content_hash}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0 ** 64


def _fraction(value: Any, n: int, name: str) -> float:
    """A part's fraction: a fraction as is, a count as count / n."""
    k = part_size(value, n, name)  # validates
    v = float(value)
    return v if v < 1 else k / max(n, 1)


def make_stable_split(labels: list[str], content_hashes: list[str], validation: Any,
                      test: Any, seed: int, structures_fingerprint: str) -> Split:
    """The stable split of the structures ``labels`` (with their ``content_hashes``,
    in the manifest's order; see the module docstring).

    ``validation`` and ``test``: fractions in [0, 1) or counts (taken as fractions
    of ``len(labels)``); ``train`` gets the rest and must not be empty.
    """
    n = len(labels)
    if len(content_hashes) != n:
        raise ConfigError(f"{n} labels but {len(content_hashes)} content hashes")
    f_test = _fraction(test, n, "test")
    f_val = _fraction(validation, n, "validation")
    if f_test + f_val >= 1:
        raise ConfigError(f"split: validation ({validation!r}) and test ({test!r}) leave "
                          f"nothing of {n} structures for training; make them smaller")
    draws = np.array([structure_draw(lab, h, seed) for lab, h in zip(labels, content_hashes)],
                     dtype=np.float64)
    part = np.full(n, 2, dtype=np.int8)              # 0 test, 1 validation, 2 train
    part[draws < f_test + f_val] = 1
    part[draws < f_test] = 0
    # a part asked for but left empty by the draws (a handful of structures only)
    for code, (lo, hi), value in ((0, (0.0, f_test), test),
                                  (1, (f_test, f_test + f_val), validation)):
        if fraction_count(hi - lo, n) >= 1 and not (part == code).any():
            spare = np.flatnonzero(part == 2)
            if len(spare) > 1:
                part[spare[np.argmin(draws[spare])]] = code
    if not (part == 2).any() and n:
        top = int(np.argmax(draws))                   # the draw nearest the training interval
        if (part == part[top]).sum() > 1:
            part[top] = 2
    if not (part == 2).any():
        raise ConfigError(f"split: validation ({validation!r}) and test ({test!r}) leave no "
                          f"training structure of {n}; make them smaller or add structures")
    indices = {p: np.flatnonzero(part == code).astype(np.int64)
               for code, p in ((2, "train"), (1, "validation"), (0, "test"))}
    return Split(indices=indices, structures_fingerprint=str(structures_fingerprint),
                 n_structures=n, seed=int(seed),
                 settings={"validation": validation, "test": test, "method": "stable"})


def write_split(path: str | os.PathLike, split: Split) -> None:
    """Write ``split`` as JSON, atomically."""
    write_json(path, split.to_dict(), indent=None)


def _fingerprint_of(expected: Any) -> str | None:
    """A fingerprint string from a string or anything with ``structures_fingerprint``
    (a :class:`~nnpflow.database.DatabaseReader`, a ``database.json`` dict)."""
    if expected is None or isinstance(expected, str):
        return expected
    if isinstance(expected, Mapping):
        return str(expected["structures_fingerprint"])
    return str(expected.structures_fingerprint)


def load_split(path: str | os.PathLike, expected_fingerprint: Any = None,
               n_structures: int | None = None) -> Split:
    """Read ``split.json`` and check it.

    ``expected_fingerprint``: the structures fingerprint of the data the split
    will index -- a string, a ``DatabaseReader`` or a ``database.json`` dict;
    a split made for other structures raises :class:`SplitMismatchError`
    naming both fingerprints.  ``n_structures``: the data's size, checked too.
    A malformed file or an unknown/newer schema raises ``SchemaError``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read split file: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: not a JSON split file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
        raise SchemaError(f"{path}: not an nnpflow split file (format "
                          f"{data.get('format') if isinstance(data, dict) else None!r})")
    version = data.get("schema_version")
    if version != SPLIT_SCHEMA_VERSION:
        raise SchemaError(f"{path}: split schema version {version!r} is not supported "
                          f"(this nnpflow reads version {SPLIT_SCHEMA_VERSION}); rerun the "
                          "split with this version")
    try:
        fingerprint = str(data["structures_fingerprint"])
        n = int(data["n_structures"])
        indices = {p: np.asarray(data["indices"][p], dtype=np.int64) for p in PARTS}
        fit = data.get("atomic_energies_fit")
        split = Split(indices=indices, structures_fingerprint=fingerprint, n_structures=n,
                      seed=int(data["seed"]), settings=dict(data.get("settings") or {}),
                      atomic_energies_fit=dict(fit) if fit else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"{path}: malformed split file ({type(exc).__name__}: {exc})") from None
    every = np.concatenate([indices[p] for p in PARTS])
    if len(every) and (every.min() < 0 or every.max() >= n
                       or len(np.unique(every)) != len(every)):
        raise SchemaError(f"{path}: indices out of range 0..{n - 1} or in two parts")
    expected = _fingerprint_of(expected_fingerprint)
    if expected is not None and expected != fingerprint:
        raise SplitMismatchError(
            f"{path} was made for other structures: its structures fingerprint is "
            f"{fingerprint[:16]}..., the data's is {expected[:16]}...; rerun the split "
            "(snakemake reruns rule split when the manifest changes)")
    if n_structures is not None and int(n_structures) != n:
        raise SplitMismatchError(f"{path} indexes {n} structures, the data has "
                                 f"{int(n_structures)}")
    return split


def sizes_summary(split: Split) -> str:
    """``train 8 (80.0 %), validation 1 (10.0 %), test 1 (10.0 %)`` for logs."""
    n = max(int(split.n_structures), 1)
    return ", ".join(f"{p} {len(split.indices[p])} ({100.0 * len(split.indices[p]) / n:.1f} %)"
                     for p in PARTS)
