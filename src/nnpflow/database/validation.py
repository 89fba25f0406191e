"""Structural checks of a database file against the schema (``docs/database.md``).

A database edited by hand, damaged by a tool or cut short can still have valid
root attributes; reading it then fails deep inside with a bare ``IndexError``,
``TypeError`` or ``KeyError`` -- or worse, reads the wrong atoms.  These checks
run when :class:`~nnpflow.database.reader.DatabaseReader` opens a file, and
raise :class:`~nnpflow.errors.SchemaError` naming the file and what is
inconsistent:

* :func:`check_structure` (on open; reads attributes, shapes and the offset
  arrays, ``S + 1`` integers per part): ``n_parts`` and the ``/parts/<k>`` groups
  agree; every required dataset is present with the shape the counts imply;
  per-part counts add up to the root counts; every offset array starts at 0,
  never decreases and ends at the length of the array it indexes; structures
  with forces (charges) have an ``atoms/forces`` (``charges``) array; atomic
  numbers are in 1..118 (on open for the shared layout and for files of up to
  :data:`OPEN_NUMBERS_LIMIT` atoms; for larger files when a block is decoded and
  in :func:`check_arrays`).
* :func:`check_arrays` (``nnpflow db info --check``): reads every array once, in
  bounded memory, and adds what needs the data: atomic numbers of every atom,
  finite positions and cells, finite stored features and derivatives, and
  derivative edge indices inside their structure.

Only the schema's names and shapes are used, never how a writer or a merge
produced the file.
"""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np

from ..errors import SchemaError
from .schema import ATOM_FIELDS, ATOMS, DERIVATIVES, FEATURES, PARTS, STRUCTURE_FIELDS, STRUCTURES

__all__ = ["check_structure", "check_arrays", "check_numbers", "OPEN_NUMBERS_LIMIT",
           "MAX_ATOMIC_NUMBER"]

#: files with at most this many atoms have every atomic number checked on open
OPEN_NUMBERS_LIMIT = 1 << 24
#: the largest atomic number (oganesson)
MAX_ATOMIC_NUMBER = 118
#: rows read at a time by :func:`check_arrays`
_ROWS = 1 << 18


def _fail(path, what: str) -> SchemaError:
    return SchemaError(f"{path}: corrupt database: {what}")


def _count(value, path, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise _fail(path, f"{what} is {value!r}, not an integer") from None
    if n < 0 or n != value:
        raise _fail(path, f"{what} is {value!r}, not a count")
    return n


def _dataset(group: h5py.Group, name: str, path, where: str) -> h5py.Dataset:
    obj = group.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise _fail(path, f"dataset {where}/{name} is missing")
    return obj


def _shape(ds: h5py.Dataset, expected: tuple, path, where: str) -> None:
    if ds.shape != tuple(expected):
        raise _fail(path, f"{where} has shape {ds.shape}, expected {tuple(expected)}")


def _offsets(ds: h5py.Dataset, rows: int, path, where: str, indexes: str) -> np.ndarray:
    """Read an offset array (S+1,) and check it: 0 first, non-decreasing, ``rows`` last."""
    offs = ds[:]
    if offs.ndim != 1 or offs.size == 0:
        raise _fail(path, f"{where} has shape {offs.shape}, expected (structures + 1,)")
    if offs.dtype.kind not in "iu":
        raise _fail(path, f"{where} holds {offs.dtype} values, expected integers")
    if offs[0] != 0:
        raise _fail(path, f"{where} starts at {int(offs[0])}, expected 0")
    down = np.flatnonzero(np.diff(offs) < 0)
    if down.size:
        k = int(down[0])
        raise _fail(path, f"{where} decreases at structure {k} "
                          f"({int(offs[k])} then {int(offs[k + 1])})")
    if int(offs[-1]) != rows:
        raise _fail(path, f"{where} ends at {int(offs[-1])}, but {indexes} has {rows} rows")
    return offs


def check_numbers(numbers: np.ndarray, path, where: str, first_structure: int | None = None,
                  atom_offset: np.ndarray | None = None) -> None:
    """Raise ``SchemaError`` when an atomic number is outside 1..118 (naming the
    structure when ``first_structure`` and local ``atom_offset`` are given)."""
    if numbers.size == 0:
        return
    bad = (numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)
    if not bad.any():
        return
    k = int(np.flatnonzero(bad)[0])
    which = ""
    if first_structure is not None and atom_offset is not None:
        j = int(np.searchsorted(atom_offset, k, side="right")) - 1
        which = f" (structure {first_structure + j})"
    raise _fail(path, f"{where} holds atomic number {int(numbers[k])} at row {k}{which}; "
                      f"atomic numbers are 1..{MAX_ATOMIC_NUMBER}")


def _part_attrs(g: h5py.Group, path, name: str) -> tuple[int, int, str, list[str]]:
    try:
        n = _count(g.attrs["n_structures"], path, f"{name} attribute n_structures")
        a = _count(g.attrs["n_atoms"], path, f"{name} attribute n_atoms")
        layout = g.attrs["species_layout"]
        keys = g.attrs["derivative_keys"]
    except KeyError as exc:
        raise _fail(path, f"{name} has no attribute {exc.args[0]!r}") from None
    layout = layout.decode() if isinstance(layout, bytes) else str(layout)
    if layout not in ("shared", "per_atom"):
        raise _fail(path, f"{name} species_layout is {layout!r}, expected 'shared' or 'per_atom'")
    try:
        keys = json.loads(keys.decode() if isinstance(keys, bytes) else keys)
    except (TypeError, ValueError):
        keys = None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _fail(path, f"{name} derivative_keys is not a JSON list of names")
    return n, a, layout, keys


def check_structure(h5: h5py.File, path, n_structures: int, n_atoms: int,
                    layout: dict[str, Any]) -> None:
    """The on-open checks (see the module docstring); ``SchemaError`` on the first
    inconsistency found."""
    n_structures = _count(n_structures, path, "attribute n_structures")
    n_atoms = _count(n_atoms, path, "attribute n_atoms")
    if "n_parts" not in h5.attrs:
        raise _fail(path, "no n_parts attribute")
    n_parts = _count(h5.attrs["n_parts"], path, "attribute n_parts")
    parts = h5.get(PARTS)
    present = sorted(parts.keys(), key=lambda k: (len(k), k)) if isinstance(parts, h5py.Group) else []
    expected = [str(p) for p in range(n_parts)]
    if present != expected:
        missing = sorted(set(expected) - set(present), key=int)
        extra = sorted(set(present) - set(expected))
        what = (f"/{PARTS}/{missing[0]} is missing" if missing
                else f"/{PARTS} also holds {', '.join(extra)}")
        raise _fail(path, f"n_parts is {n_parts} but {what}")
    features = bool(layout.get("features"))
    derivatives = bool(layout.get("force_derivatives"))
    n_feat = int(layout.get("n_features", 0) or 0)
    n_types = len(layout.get("feature_species", []) or [])
    total_s = total_a = 0
    for p in range(n_parts):
        name = f"/{PARTS}/{p}"
        g = h5[name]
        s, a, species_layout, keys = _part_attrs(g, path, name)
        total_s += s
        total_a += a
        for group in (STRUCTURES, ATOMS) + ((FEATURES,) if features else ()) + (
                (DERIVATIVES,) if derivatives else ()):
            if not isinstance(g.get(group), h5py.Group):
                raise _fail(path, f"group {name}/{group} is missing")
        st, at = g[STRUCTURES], g[ATOMS]
        w = f"{name}/{STRUCTURES}"
        atom_offset = _dataset(st, "atom_offset", path, w)
        _offsets(atom_offset, a, path, f"{w}/atom_offset", f"{name}/{ATOMS}")
        if atom_offset.shape != (s + 1,):
            raise _fail(path, f"{w}/atom_offset has {atom_offset.shape[0]} entries for {s} "
                              f"structures (expected {s + 1})")
        name_bytes = _dataset(st, "name_bytes", path, w)
        if name_bytes.ndim != 1:
            raise _fail(path, f"{w}/name_bytes has shape {name_bytes.shape}, expected (bytes,)")
        _shape(_dataset(st, "name_offset", path, w), (s + 1,), path, f"{w}/name_offset")
        _offsets(st["name_offset"], name_bytes.shape[0], path, f"{w}/name_offset",
                 f"{w}/name_bytes")
        for field, (_dtype, tail, _fill) in STRUCTURE_FIELDS.items():
            _shape(_dataset(st, field, path, w), (s,) + tail, path, f"{w}/{field}")
        w = f"{name}/{ATOMS}"
        _shape(_dataset(at, "positions", path, w), (a, 3), path, f"{w}/positions")
        numbers = _dataset(at, "numbers", path, w)
        if species_layout == "shared":
            if numbers.ndim != 1 or (s and numbers.shape[0] * s != a):
                raise _fail(path, f"{w}/numbers has shape {numbers.shape}: with the shared "
                                  f"species layout {s} structures of it make "
                                  f"{numbers.shape[0] * s if numbers.ndim == 1 else '?'} atoms, "
                                  f"but the part has {a}")
            check_numbers(numbers[:], path, f"{w}/numbers")
        else:
            _shape(numbers, (a,), path, f"{w}/numbers")
            if a <= OPEN_NUMBERS_LIMIT:
                check_numbers(numbers[:], path, f"{w}/numbers", 0, st["atom_offset"][:])
        for field, flag in (("forces", "has_forces"), ("charges", "has_charges")):
            if field in at:
                _shape(at[field], (a,) + ATOM_FIELDS[field][1], path, f"{w}/{field}")
            elif s:
                with_it = int(np.count_nonzero(st[flag][:]))
                if with_it:
                    raise _fail(path, f"{w}/{field} is missing, but {with_it} structures of "
                                      f"{name} have {field} ({STRUCTURES}/{flag})")
        if features:
            w = f"{name}/{FEATURES}"
            fg = g[FEATURES]
            _shape(_dataset(fg, "values", path, w), (a, n_feat), path, f"{w}/values")
            _shape(_dataset(fg, "species_count", path, w), (s, n_types), path,
                   f"{w}/species_count")
            for moment in ("species_mean", "species_m2"):
                _shape(_dataset(fg, moment, path, w), (s, n_types, n_feat), path,
                       f"{w}/{moment}")
        if derivatives:
            w = f"{name}/{DERIVATIVES}"
            dg = g[DERIVATIVES]
            _shape(_dataset(dg, "present", path, w), (s,), path, f"{w}/present")
            for key in keys:
                rows = _dataset(dg, key, path, w).shape[0] if _dataset(dg, key, path, w).ndim \
                    else 0
                off = _dataset(dg, f"{key}_offset", path, w)
                _shape(off, (s + 1,), path, f"{w}/{key}_offset")
                _offsets(off, rows, path, f"{w}/{key}_offset", f"{w}/{key}")
    if total_s != n_structures:
        raise _fail(path, f"the parts hold {total_s} structures, the n_structures attribute "
                          f"says {n_structures}")
    if total_a != n_atoms:
        raise _fail(path, f"the parts hold {total_a} atoms, the n_atoms attribute says "
                          f"{n_atoms}")


def _finite_rows(ds: h5py.Dataset, path, where: str, what: str) -> None:
    for lo in range(0, ds.shape[0], _ROWS):
        block = ds[lo:lo + _ROWS]
        if block.dtype.kind != "f":
            return
        bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        if bad.any():
            raise _fail(path, f"{where} holds a non-finite {what} at row "
                              f"{lo + int(np.flatnonzero(bad)[0])}")


def check_arrays(reader) -> dict[str, int]:
    """Read every array of an open :class:`DatabaseReader` once and check the
    data (see the module docstring).  Returns counts of what was read."""
    path = reader.path
    h5 = reader._file()
    read = {"structures": 0, "atoms": 0, "derivative_rows": 0}
    for part in reader._load_parts():
        g = h5[part.name]
        st, at = g[STRUCTURES], g[ATOMS]
        offs = st["atom_offset"][:]
        numbers = at["numbers"]
        if part.species_layout == "shared":
            check_numbers(numbers[:], path, f"/{part.name}/{ATOMS}/numbers")
        else:
            for lo in range(0, numbers.shape[0], _ROWS):
                first = int(np.searchsorted(offs, lo, side="right")) - 1
                check_numbers(numbers[lo:lo + _ROWS], path, f"/{part.name}/{ATOMS}/numbers",
                              first, offs[first:] - lo)
        _finite_rows(at["positions"], path, f"/{part.name}/{ATOMS}/positions", "position")
        cells = st["cell"][:]
        has_cell = st["has_cell"][:].astype(bool)
        if not np.isfinite(cells[has_cell]).all():
            k = int(np.flatnonzero(has_cell & ~np.isfinite(cells).all(axis=(1, 2)))[0])
            raise _fail(path, f"/{part.name}/{STRUCTURES}/cell of structure {part.start + k} "
                              "is not finite")
        if FEATURES in g:
            _finite_rows(g[FEATURES]["values"], path, f"/{part.name}/{FEATURES}/values",
                         "feature")
        if DERIVATIVES in g:
            dg = g[DERIVATIVES]
            for key in part.derivative_keys:
                _finite_rows(dg[key], path, f"/{part.name}/{DERIVATIVES}/{key}", "value")
                read["derivative_rows"] += int(dg[key].shape[0])
        read["structures"] += part.n
        read["atoms"] += part.n_atoms
    if reader.has_force_derivatives:
        for b in range(reader.n_blocks):  # edge indices inside their structures
            reader._read_derivative_block(b)
    return read
