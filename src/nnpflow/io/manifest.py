"""The structure manifest: one TSV row per accepted structure, plus rejections.

Manifest columns (tab-separated, one header line):

==============  ===========================================================
``label``       structure label (unique; see ``docs/architecture.md``)
``unit``        unit label (the label without ``@frame``): decides the shard
``frame``       frame index within a multi-frame source, or empty
``n_atoms``     number of atoms
``species``     species counts, alphabetical: ``Au:4 Cu:4``
``energy``      total energy in eV as stored (``repr`` precision), or empty
``has_forces``  ``true`` / ``false``
``content_hash`` :meth:`nnpflow.Structure.content_hash`
==============  ===========================================================

The joined manifest of the workflow (stage ``manifest``) and ``nnpflow ingest``
add a last column ``energy_robust_z``: the robust z-score of the structure's
referenced energy per atom (:mod:`nnpflow.energy_outliers`; empty without an
energy).  :func:`read_manifest` reads files with or without it.

Row order is canonical: the database build follows it.  The rejected list has
columns ``label`` and ``reason``.  :func:`summarize` gives the counts that go to
``manifest.json``, including ``structures_fingerprint``: the fingerprint of the
ordered ``(label, content_hash)`` rows and the filter settings, computed by
:func:`nnpflow.database.fingerprint.structures_fingerprint` -- the same function
the database writer uses, so a manifest and the database built from it carry the
same value.  It keys the train/validation/test split.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from ..database.fingerprint import filter_config, structures_fingerprint
from ..errors import InputError
from ..safe_write import atomic_path
from ..sharding import unit_label
from ..structure import Structure, atomic_number

__all__ = ["MANIFEST_COLUMNS", "OPTIONAL_COLUMNS", "REJECTED_COLUMNS", "manifest_row", "write_manifest",
           "read_manifest", "write_rejected", "read_rejected", "summarize",
           "rows_fingerprint"]

MANIFEST_COLUMNS = ("label", "unit", "frame", "n_atoms", "species", "energy", "has_forces",
                    "content_hash")
REJECTED_COLUMNS = ("label", "reason")
#: columns a manifest may add after MANIFEST_COLUMNS
OPTIONAL_COLUMNS = ("energy_robust_z",)


def manifest_row(s: Structure) -> dict:
    """The manifest row of a structure (values as strings)."""
    counts = s.composition()
    return {
        "label": s.name,
        "unit": s.name if s.frame is None else unit_label(s.name, s.frame),
        "frame": "" if s.frame is None else str(s.frame),
        "n_atoms": str(s.n_atoms),
        "species": " ".join(f"{sym}:{counts[sym]}" for sym in sorted(counts)),
        "energy": "" if s.energy is None else repr(float(s.energy)),
        "has_forces": "true" if s.forces is not None else "false",
        "content_hash": s.content_hash(),
    }


def _clean(value: str) -> str:
    text = str(value)
    if any(c in text for c in "\t\n\r"):
        # labels are checked when read; reasons may quote file content
        text = text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return text


def _write_tsv(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\t".join(columns) + "\n")
            for row in rows:
                fh.write("\t".join(_clean(row[c]) for c in columns) + "\n")


def _read_tsv(path: str | os.PathLike, columns: Sequence[str],
              optional: Sequence[str] = ()) -> list[dict]:
    path = os.fspath(path)
    try:
        fh = open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", source=path) from None
    with fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = lines[0].split("\t") if lines else []
    if header[:len(columns)] != list(columns) or header[len(columns):] != list(
            optional[:len(header) - len(columns)]):
        raise InputError(f"expected a header line with columns {', '.join(columns)}",
                         source=path, line=1)
    columns = header
    out = []
    for k, line in enumerate(lines[1:], start=2):
        values = line.split("\t")
        if len(values) != len(columns):
            raise InputError(f"{len(values)} columns, expected {len(columns)}", source=path,
                             line=k)
        out.append(dict(zip(columns, values)))
    return out


def write_manifest(path: str | os.PathLike, rows: Iterable[dict],
                   optional: Sequence[str] = ()) -> None:
    """Write manifest rows (from :func:`manifest_row`) atomically, header included;
    ``optional``: columns of :data:`OPTIONAL_COLUMNS` the rows carry too."""
    _write_tsv(path, MANIFEST_COLUMNS + tuple(optional), rows)


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Manifest rows as dicts of strings (with the optional columns the file has);
    a malformed file raises ``InputError``."""
    return _read_tsv(path, MANIFEST_COLUMNS, OPTIONAL_COLUMNS)


def write_rejected(path: str | os.PathLike, rejections: Iterable) -> None:
    """Write ``Rejection``s (or ``{label, reason}`` dicts) atomically, header included."""
    rows = ({"label": r.label, "reason": r.reason} if hasattr(r, "reason") else r
            for r in rejections)
    _write_tsv(path, REJECTED_COLUMNS, rows)


def read_rejected(path: str | os.PathLike) -> list[dict]:
    return _read_tsv(path, REJECTED_COLUMNS)


def rows_fingerprint(rows: Iterable[dict],
                     filter_meta: Mapping[str, Any] | None = None) -> str:
    """The structures fingerprint of manifest rows (in order) under the filter
    settings ``filter_meta`` (``{"max_energy", "atomic_energies"}``; ``None``:
    no filter): :func:`nnpflow.database.fingerprint.structures_fingerprint` of
    their ``(label, content_hash)`` pairs, equal to the ``structures_fingerprint``
    of a database holding the same structures in the same order."""
    return structures_fingerprint(((row["label"], row["content_hash"]) for row in rows),
                                  filter_meta)


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / n
    return {"min": min(values), "max": max(values), "mean": mean, "std": math.sqrt(var)}


def summarize(rows: Sequence[dict], n_rejected: int = 0,
              filter_meta: Mapping[str, Any] | None = None) -> dict:
    """Counts and statistics of manifest rows (JSON-compatible).

    Keys: ``n_structures``, ``n_atoms``, ``species`` (sorted by atomic number),
    ``atoms_per_species``, ``structures_per_species``, ``n_with_energy``,
    ``n_with_forces``, ``n_rejected``, ``energy`` and ``energy_per_atom`` (min,
    max, mean, std in eV and eV/atom; null without energies), ``atoms_per_structure``
    (min, max), ``filter`` (the filter settings applied at ingestion, canonical:
    ``max_energy`` eV/atom or null, ``atomic_energies`` eV) and
    ``structures_fingerprint`` (:func:`rows_fingerprint` of ``rows`` and
    ``filter_meta``).
    """
    atoms = Counter()
    structures = Counter()
    energies, per_atom = [], []
    sizes = []
    n_forces = 0
    for row in rows:
        n = int(row["n_atoms"])
        sizes.append(n)
        for part in row["species"].split():
            sym, count = part.rsplit(":", 1)
            atoms[sym] += int(count)
            structures[sym] += 1
        if row["energy"]:
            e = float(row["energy"])
            energies.append(e)
            per_atom.append(e / n)
        n_forces += row["has_forces"] == "true"
    species = sorted(atoms, key=atomic_number)
    return {
        "n_structures": len(rows),
        "n_atoms": int(sum(sizes)),
        "species": species,
        "atoms_per_species": {s: atoms[s] for s in species},
        "structures_per_species": {s: structures[s] for s in species},
        "n_with_energy": len(energies),
        "n_with_forces": n_forces,
        "n_rejected": int(n_rejected),
        "energy": _stats(energies),
        "energy_per_atom": _stats(per_atom),
        "atoms_per_structure": {"min": min(sizes), "max": max(sizes)} if sizes else None,
        "filter": filter_config(filter_meta),
        "structures_fingerprint": rows_fingerprint(rows, filter_meta),
    }
