"""Streaming database writer: structures in, one complete HDF5 file out.

:class:`DatabaseWriter` buffers at most one block of structures
(``block_structures``, default 64), appends it to resizable chunked datasets and
forgets it, so peak memory does not depend on how many structures are written.
The file is written under a temporary name next to the target and renamed only
after it is complete (:func:`nnpflow.safe_write.atomic_path`): an interrupted
build never leaves a file at the final path.

:func:`write_database` is the one-call form, with optional featurisation.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import h5py
import numpy as np

from .. import __version__
from ..errors import ConfigError, InputError, OutputError
from ..safe_write import atomic_path, canonical_json, strict_json
from ..structure import Structure, as_structure, atomic_number
from ..structure_checks import check_descriptor_species
from .columns import ColumnBlock, species_lookup, structures_to_columns
from .fingerprint import StructuresFingerprint, database_fingerprint, filter_config
from .schema import (ATOM_FIELDS, ATOMS, DEFAULT_BLOCK_STRUCTURES, DERIVATIVES, FEATURES,
                     FORMAT, PARTS, SCHEMA_VERSION, STRUCTURE_FIELDS, STRUCTURES, compression_options,
                     normalise_compression)
from .statistics import DatabaseStatistics

#: target size of one HDF5 chunk of a per-atom or derivative dataset (bytes)
CHUNK_BYTES = 1 << 20
#: target size of one HDF5 chunk of a per-structure dataset (bytes)
STRUCTURE_CHUNK_BYTES = 16 << 10

_FLOAT_DTYPES = {"float32": np.float32, "float64": np.float64}


@dataclass(frozen=True)
class DescriptorMeta:
    """What the database records about a descriptor."""

    config: dict
    sha256: str
    species: tuple[str, ...]
    n_features: int

    @classmethod
    def of(cls, descriptor: Any) -> "DescriptorMeta":
        """From a descriptor object (``config()``, ``fingerprint``, ``species``,
        ``n_features``) or an existing ``DescriptorMeta``."""
        if isinstance(descriptor, DescriptorMeta):
            return descriptor
        return cls(config=descriptor.config(), sha256=str(descriptor.fingerprint),
                   species=tuple(descriptor.species), n_features=int(descriptor.n_features))

    @property
    def species_to_idx(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.species)}


def _float_dtype(dtype: Any) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    name = {"float": "float64", "double": "float64", "single": "float32"}.get(name, name)
    if name not in _FLOAT_DTYPES:
        raise ConfigError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name


class DatabaseWriter:
    """Write a database block by block (use as a context manager).

    Parameters
    ----------
    path:
        Target file; written as ``.<name>.tmp-*`` next to it and renamed on
        :meth:`close`.  An exception inside the ``with`` block removes the
        temporary file and leaves any existing target untouched.
    descriptor:
        Descriptor object (or :class:`DescriptorMeta`) whose config is recorded
        (``persist_descriptor``) and whose features/derivatives are stored.
    persist_features, persist_force_derivatives:
        Store raw features (A, F) for every structure / derivative arrays for
        structures with forces.  Both need ``descriptor``.
    persist_descriptor:
        Record the descriptor config and SHA-256 (default: when a descriptor is
        given).  Required by persisted features and derivatives.
    compression, compression_level:
        ``"gzip"`` (alias ``"zlib"``), ``"lzf"``, ``"blosc"``, ``"zstd"`` or
        ``None``/``"none"``; level ``None`` = the codec's default.
    dtype:
        ``"float32"`` (default) or ``"float64"`` for features and derivative
        floats.  Positions, cells, energies and forces are always float64.
    shared_species:
        Store the atomic numbers once when every structure has the same species
        sequence (frames of one molecule); falls back to per-atom storage, in
        bounded memory, at the first structure that differs.
    sources_meta:
        JSON-compatible dict about the sources, e.g. ``{"content_hashes":
        {path: sha256}, "sources": [describe dicts]}``.
    filter_meta:
        The filter settings applied to the structures: ``{"max_energy": float or
        None, "atomic_energies": {species: eV}}``; part of the structures
        fingerprint.  ``atomic_energies`` also defines the referenced energy
        statistics.
    block_structures:
        Structures per write flush; also the reader's default decode unit.
    skip_incompressible:
        Store a per-atom or derivative array without the compression filter when
        a trial compression of its first block saves less than a third
        (:func:`worth_compressing`): float geometry (positions, forces, edge
        vectors) and raw features barely compress, and compressing them would
        cost more CPU than featurisation.  ``False`` compresses everything.
        The layout's ``uncompressed`` lists such arrays.
    durable:
        ``fsync`` the file before renaming it into place (survives a power
        failure; SIGKILL-safety does not need it).  Temporary shards skip it.
    """

    def __init__(self, path: str | os.PathLike, *, descriptor: Any = None,
                 persist_features: bool = False, persist_force_derivatives: bool = False,
                 persist_descriptor: bool | None = None,
                 compression: str | None = "gzip", compression_level: int | None = None,
                 dtype: str = "float32", shared_species: bool = False,
                 sources_meta: Mapping[str, Any] | None = None,
                 filter_meta: Mapping[str, Any] | None = None,
                 block_structures: int = DEFAULT_BLOCK_STRUCTURES,
                 skip_incompressible: bool = True, durable: bool = True):
        self.path = Path(path)
        self.durable = bool(durable)
        self.skip_incompressible = bool(skip_incompressible)
        self._uncompressed: list[str] = []
        self.dtype = _float_dtype(dtype)
        self.compression, self.compression_level = normalise_compression(compression,
                                                                          compression_level)
        self._h5opts = compression_options(self.compression, self.compression_level)
        self.descriptor = DescriptorMeta.of(descriptor) if descriptor is not None else None
        self.persist_features = bool(persist_features)
        self.persist_force_derivatives = bool(persist_force_derivatives)
        if persist_descriptor is None:
            persist_descriptor = self.descriptor is not None
        self.persist_descriptor = bool(persist_descriptor)
        if (self.persist_features or self.persist_force_derivatives) and self.descriptor is None:
            raise ConfigError("persist_features / persist_force_derivatives need a descriptor")
        if self.persist_descriptor and self.descriptor is None:
            raise ConfigError("persist_descriptor=True needs a descriptor")
        if (self.persist_features or self.persist_force_derivatives) and not self.persist_descriptor:
            raise ConfigError("persisted features or derivatives always record their descriptor; "
                              "persist_descriptor=False is not possible with them")
        if int(block_structures) < 1:
            raise ConfigError(f"block_structures must be >= 1, got {block_structures}")
        self.block_structures = int(block_structures)
        self.shared_species = bool(shared_species)
        self.sources_meta = json.loads(canonical_json(dict(sources_meta or {})))
        self.filter_meta = filter_config(filter_meta)
        self._ref = np.zeros(256)
        for s, e in self.filter_meta["atomic_energies"].items():
            self._ref[atomic_number(s)] = e
        self._ref_known = np.zeros(256, dtype=bool)
        for s in self.filter_meta["atomic_energies"]:
            self._ref_known[atomic_number(s)] = True
        self._lookup = (species_lookup(self.descriptor.species_to_idx)
                        if self.descriptor is not None else None)
        self._allowed_species = (frozenset(self.descriptor.species)
                                 if self.descriptor is not None else None)

        self.stats = DatabaseStatistics(
            list(self.descriptor.species) if self.persist_features else None,
            self.descriptor.n_features if self.persist_features else 0)
        self._fingerprint = StructuresFingerprint()
        self._n_structures = 0
        self._n_atoms = 0
        self._n_names_bytes = 0
        self._derivative_rows: dict[str, int] = {}
        self._derivative_keys: list[str] | None = None
        self._shared_numbers: np.ndarray | None = None
        self._species_layout = "shared" if self.shared_species else "per_atom"
        self._buffer: list[tuple[Structure, Any, Any]] = []
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        self._h5 = h5py.File(self._tmp, "w", libver=("v110", "latest"), rdcc_nbytes=0)
        self._closed = False
        self._init_file()

    # ------------------------------------------------------------------ set-up
    def _init_file(self) -> None:
        h5 = self._h5
        h5.attrs["format"] = FORMAT
        h5.attrs["schema_version"] = SCHEMA_VERSION
        h5.attrs["complete"] = False
        self._g = h5.create_group(f"{PARTS}/0")
        self._g.create_group(STRUCTURES)
        self._g.create_group(ATOMS)
        self._cols: dict[str, _Column] = {}
        self._column(STRUCTURES, "atom_offset", np.dtype("i8"), (), per_structure=True)
        self._cols["structures/atom_offset"].append(np.zeros(1, dtype=np.int64))
        self._column(STRUCTURES, "name_offset", np.dtype("i8"), (), per_structure=True)
        self._cols["structures/name_offset"].append(np.zeros(1, dtype=np.int64))
        self._column(STRUCTURES, "name_bytes", np.dtype("u1"), (), rows_hint=1 << 16)
        for name, (dtype, shape, fill) in STRUCTURE_FIELDS.items():
            self._column(STRUCTURES, name, np.dtype(dtype), shape, per_structure=True, fill=fill)
        if self.persist_features:
            self._g.create_group(FEATURES)
            t, f = len(self.descriptor.species), self.descriptor.n_features
            self._column(FEATURES, "species_count", np.dtype("i4"), (t,), per_structure=True)
            self._column(FEATURES, "species_mean", np.dtype("f8"), (t, f), per_structure=True)
            self._column(FEATURES, "species_m2", np.dtype("f8"), (t, f), per_structure=True)
        if self.persist_force_derivatives:
            self._g.create_group(DERIVATIVES)
            self._column(DERIVATIVES, "present", np.dtype("u1"), (), per_structure=True)

    def _column(self, group: str, name: str, dtype: np.dtype, shape: tuple,
                rows_hint: int | None = None, per_structure: bool = False, fill: Any = None,
                initial_rows: int = 0, sample: np.ndarray | None = None) -> "_Column":
        """Create dataset ``group/name`` (chunked along rows) and its column writer.

        With ``skip_incompressible`` and a ``sample`` (the first rows to be
        written), a trial compression decides whether the filter is worth its CPU
        time (see :func:`worth_compressing`)."""
        row_bytes = max(1, dtype.itemsize * int(np.prod(shape, dtype=np.int64)))
        if per_structure:
            rows = max(self.block_structures,
                       (STRUCTURE_CHUNK_BYTES // row_bytes) // self.block_structures
                       * self.block_structures)
        else:
            rows = max(1, CHUNK_BYTES // row_bytes)
            if rows_hint:
                rows = max(1, min(rows, int(rows_hint)))
        kwargs = dict(self._h5opts)
        if (kwargs and self.skip_incompressible and sample is not None
                and not worth_compressing(np.asarray(sample, dtype=dtype))):
            kwargs = {}
            self._uncompressed.append(f"{group}/{name}")
        if dtype.itemsize == 1 and "shuffle" in kwargs:
            kwargs["shuffle"] = False  # byte shuffle does nothing for 1-byte types
        ds = self._g[group].create_dataset(
            name, shape=(initial_rows,) + tuple(shape), dtype=dtype,
            maxshape=(None,) + tuple(shape), chunks=(rows,) + tuple(shape), fillvalue=fill,
            **kwargs)
        col = self._cols[f"{group}/{name}"] = _Column(ds, initial_rows, fill)
        return col

    # ------------------------------------------------------------------- input
    def add(self, structure: Structure, features: Any = None,
            derivative_arrays: Mapping[str, np.ndarray] | None = None, *,
            validated: bool = False) -> None:
        """Add one structure (validated), with its features (N, F) when features
        are persisted, and its ``to_arrays()`` dict when derivatives are persisted
        and the structure has forces (``None`` otherwise).  ``validated=True``:
        the caller has just run ``structure.validate()`` (the featurizer does)."""
        if self._closed:
            raise ValueError("writer is closed")
        s = as_structure(structure)
        if not validated:
            s.validate()
        if self.persist_features:
            if features is None:
                raise ValueError(f"{s.name}: features are required (persist_features=True)")
            f = np.asarray(features.detach().cpu().numpy() if hasattr(features, "detach")
                           else features)
            if f.shape != (s.n_atoms, self.descriptor.n_features):
                raise ValueError(f"{s.name}: features have shape {f.shape}, expected "
                                 f"({s.n_atoms}, {self.descriptor.n_features})")
            features = f
        elif features is not None:
            raise ValueError("features given but persist_features=False")
        if self.persist_force_derivatives:
            if derivative_arrays is None and s.forces is not None:
                raise ValueError(f"{s.name}: derivative arrays are required for structures "
                                 "with forces (persist_force_derivatives=True)")
        elif derivative_arrays is not None:
            raise ValueError("derivative arrays given but persist_force_derivatives=False")
        if self._allowed_species is not None:
            check_descriptor_species(s, self.descriptor.species, self._allowed_species)
        self._buffer.append((s, features, derivative_arrays))
        if len(self._buffer) >= self.block_structures:
            self._flush_buffer()

    def add_many(self, items: Iterable[Any]) -> None:
        for item in items:
            self.add(item)

    def _flush_buffer(self) -> None:
        if not self._buffer:
            return
        structures = [b[0] for b in self._buffer]
        feats = [b[1] for b in self._buffer] if self.persist_features else None
        ders = ([None if s.forces is None else b[2] for s, b in zip(structures, self._buffer)]
                if self.persist_force_derivatives else None)
        block = structures_to_columns(
            structures, feats, ders, feature_dtype=self.dtype,
            species_to_idx=self.descriptor.species_to_idx if self.persist_features else None)
        if ders is not None:
            block.derivatives = {k: np.asarray(v).astype(self._deriv_dtype(v), copy=False)
                                 for k, v in block.derivatives.items()}
        self._buffer.clear()
        self.append_columns(block)

    def _deriv_dtype(self, arr: np.ndarray) -> np.dtype:
        arr = np.asarray(arr)
        if arr.dtype.kind == "f":
            return np.dtype(self.dtype)
        if arr.dtype.kind in "iu":
            if arr.size and (arr.max() > np.iinfo(np.int32).max or arr.min() < np.iinfo(np.int32).min):
                return np.dtype("i8")
            return np.dtype("i4")
        return arr.dtype

    # ------------------------------------------------------------- append path
    def append_columns(self, block: ColumnBlock, *, compute_statistics: bool = True) -> None:
        """Append a block of columns.  With ``compute_statistics=False`` (the
        merge) the caller sets :attr:`stats` itself."""
        if block.n_structures == 0:
            return
        cols = self._cols
        k = block.n_structures
        a0 = self._n_atoms
        a_new = int(block.n_atoms.sum())

        # names and fingerprint
        encoded = [n.encode("utf-8") for n in block.names]
        lens = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=k)
        nb = b"".join(encoded)
        cols["structures/name_bytes"].append(np.frombuffer(nb, dtype=np.uint8))
        cols["structures/name_offset"].append(self._n_names_bytes + np.cumsum(lens))
        self._n_names_bytes += len(nb)
        for name, digest in zip(block.names, block.content_hashes()):
            self._fingerprint.add(name, digest)

        # per-structure fields
        cols["structures/atom_offset"].append(a0 + np.cumsum(block.n_atoms))
        for name in STRUCTURE_FIELDS:
            cols[f"structures/{name}"].append(block.structure[name])

        # per-atom fields
        self._append_numbers(block.numbers, block.n_atoms)
        self._atom_column("positions", a_new, block.positions).append(block.positions)
        for name, values in (("forces", block.forces), ("charges", block.charges)):
            if values is not None:
                self._atom_column(name, a_new, values).append(values)
            elif f"atoms/{name}" in cols:
                cols[f"atoms/{name}"].skip(a_new)

        # features
        if self.persist_features:
            if block.features is None:
                raise ValueError("block without features for a database with features")
            if "features/values" not in cols:
                self._column(FEATURES, "values", np.dtype(self.dtype),
                             (self.descriptor.n_features,), rows_hint=a_new,
                             sample=block.features)
            cols["features/values"].append(block.features)
            cols["features/species_count"].append(block.feature_count)
            cols["features/species_mean"].append(block.feature_mean)
            cols["features/species_m2"].append(block.feature_m2)

        # derivatives
        if self.persist_force_derivatives:
            self._append_derivatives(block)

        if compute_statistics:
            self._update_stats(block)
        self._n_structures += k
        self._n_atoms += a_new

    def _atom_column(self, name: str, rows_hint: int | None = None,
                     sample: np.ndarray | None = None) -> "_Column":
        col = self._cols.get(f"atoms/{name}")
        if col is None:
            dtype, shape, fill = ATOM_FIELDS[name]
            if sample is not None and name in ("forces", "charges"):
                sample = sample[np.isfinite(sample).reshape(len(sample), -1).all(axis=1)]
            col = self._column(ATOMS, name, np.dtype(dtype), shape, rows_hint=rows_hint,
                               fill=fill, sample=sample)
            col.skip(self._n_atoms)  # earlier structures: fill value (no storage)
        return col

    def _append_numbers(self, numbers: np.ndarray, n_atoms: np.ndarray) -> None:
        if self._species_layout == "shared":
            n = int(n_atoms[0])
            if self._shared_numbers is None:
                self._shared_numbers = np.array(numbers[:n])
            shared = self._shared_numbers
            if (np.all(n_atoms == len(shared))
                    and np.array_equal(numbers, np.tile(shared, len(n_atoms)))):
                return
            self._expand_shared_numbers()
        self._atom_column("numbers", len(numbers)).append(numbers)

    def _expand_shared_numbers(self) -> None:
        """Switch from the shared to the per-atom species layout (bounded memory)."""
        self._species_layout = "per_atom"
        shared = self._shared_numbers
        col = self._column(ATOMS, "numbers", np.dtype("u1"), (),
                           rows_hint=self.block_structures * max(1, len(shared)))
        rep = max(1, (1 << 20) // max(1, len(shared)))
        done = 0
        while done < self._n_structures:
            k = min(rep, self._n_structures - done)
            col.append(np.tile(shared, k))
            done += k

    def _append_derivatives(self, block: ColumnBlock) -> None:
        cols = self._cols
        present = (block.has_derivatives if block.has_derivatives is not None
                   else np.zeros(block.n_structures, dtype=np.uint8))
        cols["derivatives/present"].append(present)
        if block.derivatives:
            keys = sorted(block.derivatives)
            if self._derivative_keys is None:
                self._derivative_keys = keys
                for key in keys:
                    arr = block.derivatives[key]
                    self._column(DERIVATIVES, key, arr.dtype, arr.shape[1:],
                                 rows_hint=arr.shape[0], sample=arr)
                    off = self._column(DERIVATIVES, f"{key}_offset", np.dtype("i8"), (),
                                       per_structure=True)
                    # every earlier structure had no derivatives: offsets all 0
                    off.append(np.zeros(self._n_structures + 1, dtype=np.int64))
                    self._derivative_rows[key] = 0
            elif keys != self._derivative_keys:
                raise ValueError(f"derivative arrays {keys} differ from the first ones "
                                 f"{self._derivative_keys}")
        if self._derivative_keys is None:
            return
        for key in self._derivative_keys:
            col = cols[f"derivatives/{key}"]
            if block.derivatives:
                arr = block.derivatives[key]
                counts = block.derivative_counts[key]
                if arr.shape[1:] != col.shape:
                    raise ValueError(f"derivative array {key!r} has trailing shape "
                                     f"{arr.shape[1:]}, expected {col.shape}")
                col.append(arr)
            else:
                arr = None
                counts = np.zeros(block.n_structures, dtype=np.int64)
            base = self._derivative_rows[key]
            cols[f"derivatives/{key}_offset"].append(base + np.cumsum(counts))
            self._derivative_rows[key] = base + (0 if arr is None else int(arr.shape[0]))

    def _update_stats(self, block: ColumnBlock) -> None:
        numbers = block.numbers
        n_atoms = block.n_atoms
        ref_atom = self._ref[numbers]
        offs = block.atom_offset
        ref = np.add.reduceat(ref_atom, offs[:-1]) if len(ref_atom) else np.zeros(len(n_atoms))
        energy = block.structure["energy"]
        has_e = np.isfinite(energy)
        if self.filter_meta["atomic_energies"] and has_e.any():
            atom_has_e = np.repeat(has_e, n_atoms)
            unknown = ~self._ref_known[numbers] & atom_has_e
            if unknown.any():
                from ..structure import element_symbol
                z = int(numbers[np.argmax(unknown)])
                raise ConfigError(f"atomic_energies has no entry for species {element_symbol(z)!r}")
        zs, cs = np.unique(numbers, return_counts=True)
        from ..structure import element_symbol
        species_counts = {element_symbol(int(z)): int(c) for z, c in zip(zs, cs)}
        forces = None
        has_f = block.structure["has_forces"].astype(bool)
        if block.forces is not None and has_f.any():
            forces = block.forces[np.repeat(has_f, n_atoms)]
        feature_moments = feature_minmax = None
        if self.persist_features:
            from .statistics import combine_groups
            counts, mean, m2 = combine_groups(block.feature_count, block.feature_mean,
                                              block.feature_m2)
            feature_moments = (counts, mean, m2)
            sidx = self._lookup[numbers]
            t = len(self.descriptor.species)
            mins = np.full((t, self.descriptor.n_features), np.inf)
            maxs = np.full((t, self.descriptor.n_features), -np.inf)
            for i in range(t):
                rows = block.features[sidx == i]
                if len(rows):
                    mins[i] = rows.min(axis=0)
                    maxs[i] = rows.max(axis=0)
            feature_minmax = (mins, maxs)
        self.stats.update(n_atoms=n_atoms, species_counts=species_counts, energy=energy,
                          reference=ref, forces=forces, n_with_forces=int(has_f.sum()),
                          feature_moments=feature_moments, feature_minmax=feature_minmax)

    # ----------------------------------------------------------------- finish
    @property
    def n_structures(self) -> int:
        return self._n_structures + len(self._buffer)

    def layout(self) -> dict[str, Any]:
        return {
            "species_layout": self._species_layout,
            "features": self.persist_features,
            "force_derivatives": self.persist_force_derivatives,
            "descriptor": self.persist_descriptor,
            "dtype": self.dtype,
            "compression": self.compression,
            "compression_level": self.compression_level,
            "block_structures": self.block_structures,
            "n_features": self.descriptor.n_features if self.persist_features else 0,
            "feature_species": list(self.descriptor.species) if self.persist_features else [],
            "derivative_keys": list(self._derivative_keys or []),
            "skip_incompressible": self.skip_incompressible,
            "uncompressed": sorted(self._uncompressed),
        }

    def close(self) -> Path:
        """Flush, write the attributes, close and rename to the final path."""
        if self._closed:
            return self.path
        try:
            self._flush_buffer()
            self._finish_layout()
            self._write_attrs()
            self._h5.attrs["complete"] = True
            self._h5.close()
            if self.durable:
                with open(self._tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
        except BaseException as exc:
            self.abort(exc)
            raise
        self._closed = True
        self._stack.close()  # renames the temporary file to the target
        return self.path

    def abort(self, exc: BaseException | None = None) -> None:
        """Discard everything: close and remove the temporary file.

        ``exc``: the error that ends the writing, if any; a failed write (disk full)
        comes back as :class:`~nnpflow.errors.OutputError` naming the target."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._h5.close()
        with contextlib.suppress(FileNotFoundError):
            Path(self._tmp).unlink()
        # leave the ExitStack without renaming: the atomic_path context sees an error
        error = exc if exc is not None else RuntimeError("aborted")
        try:
            self._stack.__exit__(type(error), error, error.__traceback__)
        except OutputError:
            raise
        except BaseException as other:
            if other is not error:
                raise

    def _finish_layout(self) -> None:
        if self._species_layout == "shared":
            shared = (self._shared_numbers if self._shared_numbers is not None
                      else np.zeros(0, dtype=np.uint8))
            self._column(ATOMS, "numbers", np.dtype("u1"), (),
                         rows_hint=max(1, len(shared))).append(shared)
        else:
            self._atom_column("numbers")
        self._atom_column("positions")
        if self.persist_features and "features/values" not in self._cols:
            self._column(FEATURES, "values", np.dtype(self.dtype),
                         (self.descriptor.n_features,))
        for col in self._cols.values():
            col.finish()

    def _write_attrs(self) -> None:
        from ..structure import atomic_number as _z
        attrs = self._h5.attrs
        stats = self.stats.to_dict()
        structures_fp = self._fingerprint.hexdigest(self.filter_meta)
        layout = self.layout()
        desc_sha = self.descriptor.sha256 if self.persist_descriptor else None
        part = self._g.attrs
        part["n_structures"] = self._n_structures
        part["n_atoms"] = self._n_atoms
        part["species_layout"] = self._species_layout
        part["derivative_keys"] = strict_json(list(self._derivative_keys or []), indent=None)
        part["block_structures"] = self.block_structures
        attrs["n_parts"] = 1
        attrs["n_structures"] = self._n_structures
        attrs["n_atoms"] = self._n_atoms
        attrs["species"] = strict_json(sorted(stats["species_counts"], key=_z), indent=None)
        attrs["layout"] = canonical_json(layout)
        if self.persist_descriptor:
            attrs["descriptor"] = canonical_json(self.descriptor.config)
            attrs["descriptor_sha256"] = desc_sha
        attrs["sources"] = canonical_json(self.sources_meta)
        attrs["filter"] = canonical_json(self.filter_meta)
        attrs["statistics"] = strict_json(stats, indent=None)
        attrs["structures_fingerprint"] = structures_fp
        attrs["fingerprint"] = database_fingerprint(structures_fp, desc_sha, layout)
        attrs["created_by"] = f"nnpflow {__version__}"

    def __enter__(self) -> "DatabaseWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)



#: an array is compressed when a trial saves at least this fraction of its bytes
MIN_SAVING = 1.0 / 3.0


def worth_compressing(sample: np.ndarray, max_bytes: int = 1 << 16) -> bool:
    """Whether byte-shuffle + deflate (level 1) saves at least :data:`MIN_SAVING`
    on (up to ``max_bytes`` of) ``sample``."""
    import zlib
    a = np.ascontiguousarray(sample)
    if a.size == 0:
        return True
    raw = a.reshape(-1).view(np.uint8)[:max_bytes - max_bytes % a.dtype.itemsize]
    shuffled = raw.reshape(-1, a.dtype.itemsize).T.tobytes()
    return len(zlib.compress(shuffled, 1)) <= (1.0 - MIN_SAVING) * len(shuffled)


class _Column:
    """Append-only writer of one dataset.

    Rows are buffered until whole chunks are complete and written chunk-aligned
    with low-level hyperslab writes (much cheaper than h5py's slicing), so every
    chunk is compressed exactly once and HDF5 needs no chunk cache (the file is
    opened with ``rdcc_nbytes=0``); memory is bounded by one chunk per dataset.
    The extent grows geometrically and is trimmed in :meth:`finish`.
    """

    __slots__ = ("ds", "written", "capacity", "shape", "dtype", "chunk_rows", "_buf",
                 "_buffered", "fill")

    def __init__(self, ds: h5py.Dataset, length: int = 0, fill: Any = None):
        self.ds = ds
        self.written = int(length)  # rows already in the file (initial rows: fill value)
        self.capacity = int(ds.shape[0])
        self.shape = tuple(ds.shape[1:])
        self.dtype = ds.dtype
        self.chunk_rows = int(ds.chunks[0])
        self.fill = fill
        self._buf: list[np.ndarray] = []
        self._buffered = 0

    @property
    def length(self) -> int:
        return self.written + self._buffered

    def _reserve(self, end: int) -> None:
        if end > self.capacity:
            cap = max(end, 2 * self.capacity, self.chunk_rows)
            cap = -(-cap // self.chunk_rows) * self.chunk_rows
            self.ds.id.set_extent((cap,) + self.shape)
            self.capacity = cap

    def _write(self, values: np.ndarray) -> None:
        n = int(values.shape[0])
        if not n:
            return
        end = self.written + n
        self._reserve(end)
        fspace = self.ds.id.get_space()
        fspace.select_hyperslab((self.written,) + (0,) * len(self.shape), (n,) + self.shape)
        self.ds.id.write(h5py.h5s.create_simple(values.shape), fspace,
                         np.ascontiguousarray(values))
        self.written = end

    def append(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=self.dtype)
        if values.shape[1:] != self.shape:
            raise ValueError(f"{self.ds.name}: rows of shape {values.shape[1:]}, "
                             f"expected {self.shape}")
        if not values.shape[0]:
            return
        self._buf.append(values)
        self._buffered += int(values.shape[0])
        # write every complete chunk (writes start chunk-aligned after the first)
        head = (-self.written) % self.chunk_rows  # rows up to the next chunk boundary
        if self._buffered >= head + self.chunk_rows or (head and self._buffered >= head):
            data = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
            n = head + (self._buffered - head) // self.chunk_rows * self.chunk_rows
            self._write(data[:n])
            rest = data[n:]
            self._buf = [rest] if len(rest) else []
            self._buffered = int(len(rest))

    def skip(self, n: int) -> None:
        """Extend by ``n`` rows of the fill value."""
        n = int(n)
        fill = self.fill if self.fill is not None else 0
        while n > 0:
            k = min(n, max(self.chunk_rows, 1 << 16))
            self.append(np.full((k,) + self.shape, fill, dtype=self.dtype))
            n -= k

    def finish(self) -> None:
        if self._buf:
            data = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
            self._buf, self._buffered = [], 0
            self._write(data)
        if self.capacity != self.written:
            self.ds.id.set_extent((self.written,) + self.shape)
            self.capacity = self.written


def write_database(path: str | os.PathLike, structures: Iterable[Any], *,
                   descriptor: Any = None, persist_features: bool = False,
                   persist_force_derivatives: bool = False,
                   persist_descriptor: bool | None = None,
                   compression: str | None = "gzip", compression_level: int | None = None,
                   dtype: str = "float32", shared_species: bool = False,
                   sources_meta: Mapping[str, Any] | None = None,
                   filter_meta: Mapping[str, Any] | None = None,
                   show_progress: bool = False,
                   block_structures: int = DEFAULT_BLOCK_STRUCTURES,
                   on_progress: Callable[[int], None] | None = None,
                   skip_incompressible: bool = True, durable: bool = True,
                   check_overlaps: bool = False,
                   on_reject: Callable[[Structure, Exception], None] | None = None,
                   validated: bool = False) -> Path:
    """Write ``structures`` (``Structure`` or ``ase.Atoms``, any iterable) to a
    new database at ``path``, streaming with memory bounded by one block.

    With ``persist_features`` / ``persist_force_derivatives`` the structures are
    featurised here with ``descriptor`` (batched, block by block); derivatives
    are stored for structures with forces.  The structures are written as given
    (filtering is the caller's job; ``filter_meta`` records what was applied),
    except that ``check_overlaps`` rejects structures with two atoms (periodic
    images included) at or below the descriptor's ``min_cutoff`` Å: the first
    one raises :class:`~nnpflow.errors.InputError`, or, with ``on_reject``,
    ``on_reject(structure, error)`` is called and the structure left out.
    ``validated``: the structures were already validated and their species
    checked against the descriptor (e.g. by ``SourceCollection.iter_structures``).
    ``on_progress(n)`` is called after every block with the number of structures
    just written.  See :class:`DatabaseWriter` for the other parameters.
    Returns the path.
    """
    from .featurize import BlockFeaturizer

    featurizer = None
    if check_overlaps and descriptor is None:
        raise ConfigError("check_overlaps compares distances with the descriptor's min_cutoff; "
                          "there is no descriptor")
    if persist_features or persist_force_derivatives or check_overlaps:
        if descriptor is None:
            raise ConfigError("persist_features / persist_force_derivatives need a descriptor")
        # with nothing to persist the featurizer only checks (no descriptor work)
        featurizer = BlockFeaturizer(descriptor, features=persist_features,
                                     derivatives=persist_force_derivatives, dtype=dtype,
                                     check_overlaps=check_overlaps, on_reject=on_reject,
                                     validated=validated)
    progress = None
    if show_progress:
        from tqdm.auto import tqdm
        progress = tqdm(desc=f"writing {Path(path).name}", unit="structure")
    with DatabaseWriter(path, descriptor=descriptor, persist_features=persist_features,
                        persist_force_derivatives=persist_force_derivatives,
                        persist_descriptor=persist_descriptor, compression=compression,
                        compression_level=compression_level, dtype=dtype,
                        shared_species=shared_species, sources_meta=sources_meta,
                        filter_meta=filter_meta, block_structures=block_structures,
                        skip_incompressible=skip_incompressible, durable=durable) as writer:
        batch: list[Structure] = []

        def flush() -> None:
            if featurizer is None:
                for s in batch:
                    writer.add(s)
            else:
                for s, f, d in featurizer(batch):  # validated by the featurizer
                    writer.add(s, f, d, validated=True)
            if progress is not None:
                progress.update(len(batch))
            if on_progress is not None and batch:
                on_progress(len(batch))
            batch.clear()

        try:
            items = iter(structures)
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    break
                except InputError:
                    # the first bad input raises: an overlap read before this one does
                    if featurizer is not None and on_reject is None:
                        featurizer.raise_first_overlap(batch)
                    raise
                batch.append(as_structure(item))
                if len(batch) >= block_structures:
                    flush()
            flush()
        finally:
            if progress is not None:
                progress.close()
    return Path(path)
