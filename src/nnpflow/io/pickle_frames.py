"""Enerzyme-style data sets: pickles (and npz) of frames with a field mapping.

Layouts
-------
* a list (or tuple) of per-frame dicts, ``[{"coordinates": (N, 3), ...}, ...]``;
* a dict of per-frame arrays or lists, ``{"coordinates": (F, N, 3) or [F x (N_f, 3)],
  "energy": (F,), ...}``.  ``Za``, ``N`` and ``Q`` may be given once for all
  frames (``Za`` as one (N,) vector, ``N``/``Q`` as a scalar);
* ``.npz`` files are read as the dict layout (``numpy.load(allow_pickle=False)``).

Field mapping (Enerzyme's Datahub convention): ``features`` and ``targets`` map
the standard names to the file's keys (Enerzyme lists N, Ra, Za, Q as features
and E, Fa, Qa, M2 as targets; either list is accepted for any name).

========  ==========================  =====================
name      meaning                     shape / unit
========  ==========================  =====================
``N``     number of atoms             scalar (frames may be padded to max N)
``Ra``    positions                   (N, 3) Å
``Za``    atomic numbers              (N,)
``Q``     total charge                scalar, e
``E``     total energy                scalar, eV
``Fa``    forces                      (N, 3) eV/Å
``Qa``    atomic charges              (N,) e
``M2``    dipole moment               (3,) e·Å
========  ==========================  =====================

``Ra`` and ``Za`` are required; ``Za`` may hold atomic numbers or element symbols
(converted, as Enerzyme does).  Without a mapping, the standard names present
in the file are used as keys.  A mapping value ``None`` means the standard name
itself; where the file has no such field, ``N`` is inferred from ``Za`` and ``Q``
is 0 (Enerzyme's rules).  When ``N`` is mapped, per-atom arrays are cut to
their first ``N`` rows (Enerzyme pads frames of different size).  Values must
already be in eV and Å.  Structures are isolated (no cell).

Transforms
----------
``atomic_energy: path.csv`` (columns ``atom_type,atomic_energy``, eV) subtracts
``sum_i E_ref[species_i]`` from ``E``; the subtracted references are recorded in
``Structure.info["atomic_energy_reference"]`` (``{"file", "energies", "total"}``)
so later steps never subtract them twice.  ``negative_gradient: true`` flips the
sign of ``Fa`` (for files holding energy gradients instead of forces).

Safety
------
Loading a pickle can run arbitrary code, and a 32-byte pickle can ask for a
4 GB buffer (``bytearray(4000000000)``).  This reader uses a restricted unpickler
that only rebuilds Python's built-in containers and scalars and numpy arrays,
dtypes and scalars, and only from data that is in the file: a constructor called
with a size or a lazy iterator (``bytearray(n)``, ``list(range(n))``) and a numpy
array whose shape claims more items than its data holds are refused, as is
anything else (a class, a function, a torch tensor), with an
:class:`~nnpflow.errors.InputError` naming the file, before anything is
allocated.  Still, read pickles only from people you trust, or convert them to
``.npz``.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

from ..energy_reference import SUBTRACTED_REFERENCE_KEY, read_atomic_energy_csv
from ..errors import ConfigError, InputError
from ..structure import Structure, atomic_number, element_symbol

__all__ = ["read_frames", "iter_frame_results", "load_pickle", "FEATURE_FIELDS",
           "TARGET_FIELDS", "TRANSFORMS", "ENERGY_REFERENCE_KEY", "PICKLE_SUFFIXES"]

FEATURE_FIELDS = ("N", "Ra", "Za", "Q")
TARGET_FIELDS = ("E", "Fa", "Qa", "M2")
TRANSFORMS = ("atomic_energy", "negative_gradient")
#: ``Structure.info`` key recording atomic reference energies already subtracted.
ENERGY_REFERENCE_KEY = SUBTRACTED_REFERENCE_KEY
PICKLE_SUFFIXES = (".pkl", ".pickle")

def _refuse(what: str) -> InputError:
    return InputError(f"pickle {what}, which nnpflow does not load: only lists, dicts, "
                      "numbers, strings and numpy arrays whose data is in the file are "
                      "allowed (a pickle can make a small file allocate gigabytes or run "
                      "code)")


def _materialised(*args) -> None:
    """Arguments must be data already in the file: containers, strings, bytes,
    numbers -- never a size (an int) or a lazy iterator a constructor would expand."""
    for a in args:
        if not isinstance(a, (list, tuple, dict, set, frozenset, str, bytes, bytearray)):
            raise _refuse(f"calls a constructor with a {type(a).__name__} argument")


def _container(kind):
    def build(*args):
        if len(args) > 1:
            raise _refuse(f"calls {kind.__name__} with {len(args)} arguments")
        _materialised(*args)
        return kind(*args)
    build.__name__ = kind.__name__
    return build


def _byte_string(kind):
    def build(*args):
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin-1", "latin1"):
            return kind(*args)  # protocol 2's spelling of bytearray(b"...")
        if len(args) > 1 or (args and not isinstance(args[0], (bytes, bytearray, list, tuple))):
            raise _refuse(f"calls {kind.__name__}({', '.join(type(a).__name__ for a in args)})")
        return kind(*args)
    build.__name__ = kind.__name__
    return build


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise _refuse(f"calls codecs.encode({type(obj).__name__}, {encoding!r})")
    return obj.encode("latin-1")


#: largest item size (bytes) of a numpy dtype rebuilt from a pickle
MAX_DTYPE_ITEMSIZE = 1 << 20


def _dtype(*args):
    if not args or not isinstance(args[0], str) or len(args) > 3:
        raise _refuse("builds a numpy dtype from something other than a type code")
    dt = np.dtype(*args)
    if dt.itemsize > MAX_DTYPE_ITEMSIZE:
        raise _refuse(f"builds a numpy dtype of {dt.itemsize} bytes per item")
    return dt


class _CheckedArray(np.ndarray):
    """The array type numpy's pickles are rebuilt as: its ``__setstate__`` checks
    that the data is all there before numpy allocates the claimed shape (plain
    ``ndarray.__setstate__`` allocates first).  :func:`load_pickle` hands out plain
    ``ndarray`` views of them."""

    def __new__(cls, *args, **kwargs):
        raise _refuse("creates a numpy array directly")

    def __setstate__(self, state):
        _check_array_state(state)
        np.ndarray.__setstate__(self, state)


def _reconstruct(subtype, shape, dtype):
    # numpy's pickles start from an empty array and fill it in __setstate__ (BUILD)
    if (subtype is not _CheckedArray or type(shape) is not tuple
            or not all(type(n) is int and 0 <= n <= 1 for n in shape)):
        raise _refuse("rebuilds something other than an empty numpy.ndarray")
    return np.ndarray.__new__(_CheckedArray, shape, dtype)


#: types :func:`_plain` never needs to look into
_LEAVES = frozenset({int, float, str, bytes, bool, complex, type(None), bytearray})


def _plain(obj, seen: dict):
    """``obj`` with every ``_CheckedArray`` replaced by a plain ndarray view
    (containers are changed in place; tuples rebuilt only when something changed)."""
    t = type(obj)
    if t in _LEAVES:
        return obj
    if t is _CheckedArray:
        out = obj.view(np.ndarray)
        if obj.dtype.hasobject:
            flat = out.reshape(-1)
            for k in range(flat.size):
                flat[k] = _plain(flat[k], seen)
        return out
    key = id(obj)
    if key in seen:
        return seen[key]
    seen[key] = obj  # shared and cyclic containers are visited once
    if t is list:
        for k, v in enumerate(obj):
            if type(v) not in _LEAVES:
                new = _plain(v, seen)
                if new is not v:
                    obj[k] = new
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if type(v) not in _LEAVES:
                new = _plain(v, seen)
                if new is not v:
                    obj[k] = new
    elif t is tuple:
        items = [_plain(v, seen) for v in obj]
        if any(a is not b for a, b in zip(items, obj)):
            seen[key] = tuple(items)
    return seen[key]


def _numpy_scalar(dtype, *args):
    if not isinstance(dtype, np.dtype):
        raise _refuse("builds a numpy scalar without a dtype")
    if args and not dtype.hasobject and not (isinstance(args[0], (bytes, bytearray))
                                             and len(args[0]) == dtype.itemsize):
        raise _refuse("builds a numpy scalar whose data does not match its dtype")
    return _NUMPY_SCALAR(dtype, *args)


def _frombuffer(buf, dtype, shape, order):
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(
            dtype, np.dtype):
        raise _refuse("rebuilds an array from something other than bytes")
    return _NUMPY_FROMBUFFER(buf, dtype, shape, order)


def _numpy_function(module: str, name: str):
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


_NUMPY_SCALAR = (_numpy_function("numpy._core.multiarray", "scalar")
                 or _numpy_function("numpy.core.multiarray", "scalar"))
_NUMPY_FROMBUFFER = (_numpy_function("numpy._core.numeric", "_frombuffer")
                     or _numpy_function("numpy.core.numeric", "_frombuffer"))

#: (module, name) -> what the restricted unpickler hands out for it: the plain
#: types that allocate no more than their arguments, checked wrappers for the rest
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{("builtins", k.__name__): _container(k) for k in (dict, list, tuple, set, frozenset)},
    ("builtins", "bytearray"): _byte_string(bytearray),
    ("builtins", "bytes"): _byte_string(bytes),
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("collections", "OrderedDict"): _container(__import__("collections").OrderedDict),
    ("numpy", "ndarray"): _CheckedArray,
    ("numpy", "dtype"): _dtype,
    # protocol-2 pickles of numpy arrays encode their bytes with codecs.encode(str, "latin1")
    ("_codecs", "encode"): _latin1_encode, ("codecs", "encode"): _latin1_encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "scalar")] = _numpy_scalar
    _ALLOWED_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _frombuffer


def _check_array_state(state) -> None:
    """``ndarray.__setstate__`` allocates the array its state claims before it looks
    at the data; only states whose data is all there are let through."""
    try:
        _version, shape, dtype, _fortran, data = state
        count = 1
        for n in shape:
            if not isinstance(n, int) or n < 0:
                raise TypeError
            count *= n
    except (TypeError, ValueError):
        raise _refuse("holds a malformed numpy array state") from None
    if not isinstance(dtype, np.dtype):
        raise _refuse("holds a numpy array state without a dtype")
    if dtype.hasobject:
        ok = isinstance(data, list) and len(data) == count
    else:
        ok = (isinstance(data, (bytes, bytearray, str))
              and len(data) == count * dtype.itemsize)
    if not ok:
        size = len(data) if isinstance(data, (list, bytes, bytearray, str)) else "no"
        raise _refuse(f"holds a numpy array of shape {tuple(shape)} and dtype {dtype} "
                      f"with {size} items/bytes of data")


class _RestrictedUnpickler(pickle.Unpickler):
    """Python's unpickler limited to the globals of :data:`_ALLOWED_GLOBALS`."""

    def __init__(self, fh, source: str):
        super().__init__(fh)
        self.source = source

    def find_class(self, module: str, name: str):
        # Python 2 names (protocols 0-2 write __builtin__.set), mapped as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is not None:
            return found
        if module == "numpy.dtypes" and name.endswith("DType"):
            return super().find_class(module, name)
        raise InputError(f"pickle refers to {module}.{name}, which nnpflow does not load: "
                         "only lists, dicts, numbers, strings and numpy arrays are allowed "
                         "(loading other objects could run code)", source=self.source)

    def persistent_load(self, pid):  # pragma: no cover - nothing legitimate uses it
        raise InputError("pickle uses persistent ids, which nnpflow does not load",
                         source=self.source)


def load_pickle(path: str | os.PathLike, label: str | None = None) -> Any:
    """Load a pickle with the restricted unpickler (see the module docstring)."""
    label = label or os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", source=label) from None
    if not data:
        raise InputError("empty file", source=label)
    try:
        loaded = _RestrictedUnpickler(io.BytesIO(data), label).load()
        return _plain(loaded, {})
    except InputError as exc:
        raise exc.located(label) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, ImportError, MemoryError, UnicodeDecodeError,
            OverflowError) as exc:
        raise InputError(f"not a readable pickle ({type(exc).__name__}: {exc})",
                         source=label) from None


def _load_npz(path: str, label: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise InputError("npz holds object arrays, which need pickle to load; nnpflow "
                             "does not load them (store ragged frames as a .pkl list of "
                             "dicts instead)", source=label) from None
        raise InputError(f"not a readable npz file ({exc})", source=label) from None
    except (OSError, EOFError, KeyError) as exc:
        raise InputError(f"not a readable npz file ({type(exc).__name__}: {exc})",
                         source=label) from None
    except Exception as exc:  # zipfile.BadZipFile and friends
        raise InputError(f"not a readable npz file ({type(exc).__name__}: {exc})",
                         source=label) from None


def _is_zip(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _check_mapping(features: Mapping | None, targets: Mapping | None,
                   transforms: Mapping | None) -> None:
    allowed = FEATURE_FIELDS + TARGET_FIELDS
    for what, mapping in (("features", features), ("targets", targets)):
        if mapping is None:
            continue
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{what} must be a mapping of standard names to keys, "
                              f"got {type(mapping).__name__}")
        for name, key in mapping.items():
            # Enerzyme lists N, Ra, Za, Q as features and E, Fa, Qa, M2 as targets; the
            # meaning of a name does not depend on the list, so either list is accepted
            if name not in allowed:
                raise ConfigError(f"unknown {what} field {name!r}; expected one of "
                                  f"{', '.join(allowed)}")
            if key is not None and not isinstance(key, (str, int)):
                raise ConfigError(f"{what}.{name} must name a key of the file, got {key!r}")
    for name in set(features or {}) & set(targets or {}):
        if None not in (features[name], targets[name]) and features[name] != targets[name]:
            raise ConfigError(f"{name} is mapped twice: to {features[name]!r} in features and "
                              f"to {targets[name]!r} in targets")
    for name, value in (transforms or {}).items():
        if name not in TRANSFORMS:
            raise ConfigError(f"unknown transform {name!r}; expected one of "
                              f"{', '.join(TRANSFORMS)}")
        if name == "negative_gradient" and not isinstance(value, bool):
            raise ConfigError(f"transform negative_gradient must be true or false, got {value!r}")
        if name == "atomic_energy" and not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"transform atomic_energy must be a CSV path, got {value!r}")


def _mapping(features, targets, keys) -> dict[str, Any]:
    """standard name -> file key."""
    if features is None and targets is None:
        return {n: n for n in FEATURE_FIELDS + TARGET_FIELDS if n in keys}
    out = dict(features or {})
    out.update({k: v for k, v in (targets or {}).items() if not (v is None and k in out)})
    # a null key is the standard name itself (Enerzyme); without such a field in the
    # file, N is inferred from Za and Q is 0
    for name, key in list(out.items()):
        if key is None:
            if name in keys:
                out[name] = name
            elif name in ("N", "Q"):
                out[name] = None
            else:
                out[name] = name  # reported as a missing field when the frames are read
    return out


class _Frames:
    """Per-frame access to one of the two layouts."""

    def __init__(self, data: Any, mapping: dict[str, Any], label: str):
        self.label = label
        self.mapping = mapping
        if isinstance(data, Mapping):
            self.layout = "dict"
            self.data = data
            for name, key in mapping.items():
                if key is None:  # N inferred, Q 0 (see _mapping)
                    continue
                if key not in data:
                    raise InputError(f"no field {key!r} (mapped to {name}); the file has "
                                     f"{_keys(data)}", source=label)
            ra = data[mapping["Ra"]]
            if isinstance(ra, np.ndarray) and ra.dtype != object:
                if ra.ndim != 3 or ra.shape[-1] != 3:
                    raise InputError(f"{mapping['Ra']!r} (Ra) has shape {ra.shape}; expected "
                                     "(frames, atoms, 3) or a list of (atoms, 3) arrays",
                                     source=label)
            elif not isinstance(ra, (list, tuple, np.ndarray)):
                raise InputError(f"{mapping['Ra']!r} (Ra) is a {type(ra).__name__}; expected "
                                 "(frames, atoms, 3) or a list of (atoms, 3) arrays",
                                 source=label)
            self.n_frames = len(ra)
            self.shared = {}
            for name, key in mapping.items():
                if key is None:
                    continue
                value = data[key]
                if _is_shared(name, value):
                    self.shared[name] = value
                elif _length(value) != self.n_frames:
                    raise InputError(f"{key!r} ({name}) has {_length(value)} entries for "
                                     f"{self.n_frames} frames", source=label)
        elif isinstance(data, (list, tuple)):
            self.layout = "list"
            self.data = data
            self.n_frames = len(data)
            self.shared = {}
            for k, frame in enumerate(data):
                if not isinstance(frame, Mapping):
                    raise InputError(f"frame {k} is a {type(frame).__name__}; expected a "
                                     "dict of fields", source=label)
        else:
            raise InputError(f"expected a list of per-frame dicts or a dict of per-frame "
                             f"arrays, found a {type(data).__name__}", source=label)
        if self.n_frames == 0:
            raise InputError("no frames", source=label)
        if "Q" in mapping and mapping["Q"] is None:
            self.shared["Q"] = 0.0  # Q: null without a Q field: neutral frames (Enerzyme)

    def get(self, k: int, name: str):
        if name in self.shared:
            return self.shared[name]
        key = self.mapping[name]
        if self.layout == "dict":
            return self.data[key][k]
        frame = self.data[k]
        if key not in frame:
            raise InputError(f"frame {k} has no field {key!r} (mapped to {name}); it has "
                             f"{_keys(frame)}")
        return frame[key]


def _keys(d: Mapping) -> str:
    keys = [repr(k) for k in list(d)[:20]]
    return ", ".join(keys) + (" ..." if len(d) > 20 else "") if keys else "no fields"


def _length(value) -> int | None:
    try:
        return len(value)
    except TypeError:
        return None


def _is_shared(name: str, value) -> bool:
    """Whether a dict-layout field holds one value for all frames."""
    if name in ("N", "Q"):
        return np.ndim(value) == 0 and not isinstance(value, (list, tuple))
    if name == "Za":
        if isinstance(value, np.ndarray):
            return value.ndim == 1 and value.dtype != object
        return (isinstance(value, (list, tuple)) and len(value) > 0
                and all(isinstance(v, (int, np.integer, str)) for v in value))
    return False


def _array(value, name: str, shape_tail: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError):
        raise InputError(f"{name} is not numeric") from None
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
        want = "(atoms" + "".join(f", {d}" for d in shape_tail) + ")"
        raise InputError(f"{name} has shape {arr.shape}, expected {want}")
    return arr


def _scalar(value, name: str) -> float:
    arr = np.asarray(value)
    if arr.size != 1:
        raise InputError(f"{name} has shape {arr.shape}, expected a scalar")
    try:
        return float(arr.reshape(-1)[0])
    except (ValueError, TypeError):
        raise InputError(f"{name} is not numeric: {value!r}") from None


def _atomic_numbers(value) -> np.ndarray:
    """``Za`` as int64 atomic numbers: integers (or whole floats), or element symbols
    (``"O"``, ``b"H"``, case-insensitive), as Enerzyme converts them."""
    try:
        z = np.asarray(value)
    except (ValueError, TypeError):
        raise InputError("Za is not numeric") from None
    if z.dtype.kind in "USO" and z.size:
        if z.ndim != 1:
            raise InputError(f"Za has shape {z.shape}, expected (atoms,)")
        numbers = []
        for token in z.tolist():
            if isinstance(token, bytes):
                token = token.decode("ascii", "replace")
            if isinstance(token, (bool, np.bool_)) or not isinstance(token, (str, int, np.integer)):
                raise InputError(f"Za holds {token!r}, neither an atomic number nor an "
                                 "element symbol")
            try:
                numbers.append(atomic_number(element_symbol(token)))
            except InputError as exc:
                raise InputError(f"Za: {exc.reason}") from None
        return np.asarray(numbers, dtype=np.int64)
    if z.dtype.kind == "f":
        if not np.all(z == np.round(z)):
            raise InputError("Za holds non-integer atomic numbers")
        return z.astype(np.int64)
    if z.dtype.kind not in "iu":
        raise InputError(f"Za has dtype {z.dtype}, expected integers or element symbols")
    return z


def _build_frame(frames: _Frames, k: int, label: str, ref: dict | None, ref_file: str | None,
                 flip_forces: bool, frame: int | None = None) -> Structure:
    m = frames.mapping
    positions = _array(frames.get(k, "Ra"), "Ra", (3,))
    z = _atomic_numbers(frames.get(k, "Za"))
    if z.ndim != 1:
        raise InputError(f"Za has shape {z.shape}, expected (atoms,)")
    n = len(positions)
    if m.get("N") is not None:
        n_val = _scalar(frames.get(k, "N"), "N")
        if n_val != int(n_val) or not 1 <= n_val <= min(len(positions), len(z)):
            raise InputError(f"N = {n_val:g} does not fit Ra with {len(positions)} and Za "
                             f"with {len(z)} rows")
        n = int(n_val)
        positions, z = positions[:n], z[:n]
    if len(z) != n:
        raise InputError(f"Za has {len(z)} atomic numbers for {n} positions")
    if np.any(z == 0):
        raise InputError("atomic number 0 (padding?); map N to the number of atoms")
    species = []
    for zi in z.tolist():
        species.append(element_symbol(int(zi)))
    energy = _scalar(frames.get(k, "E"), "E") if "E" in m else None
    forces = _array(frames.get(k, "Fa"), "Fa", (3,))[:n] if "Fa" in m else None
    if forces is not None and len(forces) != n:
        raise InputError(f"Fa has {len(forces)} rows for {n} atoms")
    if forces is not None and flip_forces:
        forces = -forces
    charges = None
    if "Qa" in m:
        charges = np.asarray(frames.get(k, "Qa"), dtype=np.float64).reshape(-1)[:n]
        if len(charges) != n:
            raise InputError(f"Qa has {len(charges)} entries for {n} atoms")
    total_charge = _scalar(frames.get(k, "Q"), "Q") if "Q" in m else None
    dipole = None
    if "M2" in m:
        dipole = np.asarray(frames.get(k, "M2"), dtype=np.float64).reshape(-1)
        if dipole.shape != (3,):
            raise InputError(f"M2 has {dipole.size} components, expected 3")
    info = {}
    if ref is not None:
        missing = sorted(set(species) - set(ref))
        if missing:
            raise InputError(f"atomic_energy file {ref_file} has no entry for "
                             f"{', '.join(missing)}")
        used = {s: ref[s] for s in sorted(set(species))}
        total = float(sum(ref[s] for s in species))
        energy = energy - total
        info[ENERGY_REFERENCE_KEY] = {"file": ref_file, "energies": used, "total": total}
    return Structure(positions=positions, species=species, energy=energy, forces=forces,
                     charges=charges, total_charge=total_charge, dipole=dipole, name=label,
                     frame=frame, info=info)


def iter_frame_results(path: str | os.PathLike, features: Mapping | None = None,
                       targets: Mapping | None = None, transforms: Mapping | None = None,
                       base_dir: str | os.PathLike | None = None, *,
                       label: str | None = None) -> Iterator[Structure | InputError]:
    """Like :func:`read_frames`, but a bad frame is yielded as its ``InputError``
    (so a caller can skip it and go on); errors about the whole file are raised."""
    path = os.fspath(path)
    label = label or os.path.normpath(path).replace(os.sep, "/")
    _check_mapping(features, targets, transforms)
    transforms = dict(transforms or {})
    ref = ref_file = None
    if transforms.get("atomic_energy") is not None:
        ref_file = os.fspath(transforms["atomic_energy"])
        if base_dir is not None and not os.path.isabs(ref_file):
            ref_file = os.path.join(os.fspath(base_dir), ref_file)
        ref = read_atomic_energy_csv(ref_file)
    flip = bool(transforms.get("negative_gradient", False))
    if _is_zip(path):  # .npz (a zip archive), whatever its name
        data = _load_npz(path, label)
    else:
        data = load_pickle(path, label)
    keys = data.keys() if isinstance(data, Mapping) else (
        data[0].keys() if isinstance(data, (list, tuple)) and data
        and isinstance(data[0], Mapping) else ())
    mapping = _mapping(features, targets, keys)
    for required in ("Ra", "Za"):
        if required not in mapping:
            raise ConfigError(f"{label}: the field mapping needs {required} "
                              f"(features: {dict(features or {})})")
    if ref is not None and "E" not in mapping:
        raise ConfigError(f"{label}: transform atomic_energy needs E in targets")
    if flip and "Fa" not in mapping:
        raise ConfigError(f"{label}: transform negative_gradient needs Fa in targets")
    frames = _Frames(data, mapping, label)
    multi = frames.n_frames > 1
    for k in range(frames.n_frames):
        name = f"{label}@{k}" if multi else label
        try:
            s = _build_frame(frames, k, name, ref, ref_file, flip, frame=k if multi else None)
        except InputError as exc:
            yield InputError(exc.reason, source=name)
            continue
        if multi:
            s.frame = k
        yield s


def read_frames(path: str | os.PathLike, features: Mapping | None = None,
                targets: Mapping | None = None, transforms: Mapping | None = None,
                base_dir: str | os.PathLike | None = None, *,
                label: str | None = None) -> Iterator[Structure]:
    """Structures from an Enerzyme-style pickle or npz (see the module docstring).

    ``features``/``targets`` map standard names to the file's keys; ``transforms``
    may hold ``atomic_energy`` (CSV path, relative to ``base_dir`` when given) and
    ``negative_gradient`` (bool).  Frames are labelled ``label@k`` when the file
    holds more than one.  Raises :class:`InputError` at the first bad frame.
    """
    for item in iter_frame_results(path, features, targets, transforms, base_dir, label=label):
        if isinstance(item, InputError):
            raise item
        yield item
