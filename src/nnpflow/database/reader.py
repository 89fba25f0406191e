"""Lazy, read-only access to a database; safe across fork and DataLoader workers.

:class:`DatabaseReader` opens its h5py handle on first use *in each process*
(it remembers the process id and reopens after a fork; pickling drops the
handle), so a reader made in the parent can be handed to DataLoader workers.
Reads go through *blocks* of ``block_structures`` consecutive structures
(the writer's flush unit, aligned with the HDF5 chunks): one block costs one
slice read per dataset, and decoded blocks are kept in a per-process LRU cache
whose size is given in structures (``cache_size``).  Derivative arrays are
decoded in their own blocks, only when asked for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from ..errors import SchemaError
from ..structure import Structure, element_symbol
from .block_cache import LRUCache
from .columns import species_lookup
from .links import check_linked_parts, linked_files, linked_parts
from .schema import (ATOMS, DERIVATIVES, FEATURES, PARTS, STRUCTURE_FIELDS, STRUCTURES,
                     check_schema, json_attr)
from .statistics import DatabaseStatistics, Moments, combine_groups
from .validation import OPEN_NUMBERS_LIMIT, check_arrays, check_numbers, check_structure

#: HDF5 raw-data chunk cache per dataset (bytes) and its hash slots
RDCC_NBYTES = 2 << 20
RDCC_NSLOTS = 1021

_SYMBOLS = np.array([""] + [element_symbol(z) for z in range(1, 119)], dtype=object)


@dataclass
class _Part:
    """One row group ``/parts/<k>``: structures ``start:start+n`` of the database."""

    index: int
    name: str
    start: int
    n: int
    n_atoms: int
    species_layout: str
    derivative_keys: list[str]
    block_base: int
    n_blocks: int


@dataclass
class Block:
    """Decoded structures ``start:stop`` (units Å, eV, eV/Å, e, e·Å).

    Per-structure arrays have ``stop - start`` rows; per-atom arrays are
    concatenated with local offsets ``atom_offset`` (k+1,).
    """

    start: int
    stop: int
    atom_offset: np.ndarray
    names: list[str]
    fields: dict[str, np.ndarray]
    positions: np.ndarray
    numbers: np.ndarray
    forces: np.ndarray | None
    charges: np.ndarray | None
    features: np.ndarray | None

    def atoms(self, j: int) -> slice:
        """Slice of local structure ``j``'s atoms in the per-atom arrays."""
        return slice(int(self.atom_offset[j]), int(self.atom_offset[j + 1]))

    def structure(self, j: int) -> Structure:
        """Local structure ``j`` as a :class:`Structure` (copies)."""
        sl = self.atoms(j)
        f = self.fields
        cell = np.array(f["cell"][j]) if f["has_cell"][j] else None
        energy = float(f["energy"][j])
        total_charge = float(f["total_charge"][j])
        dipole = f["dipole"][j]
        frame = int(f["frame"][j])
        return Structure(
            positions=np.array(self.positions[sl]),
            species=list(_SYMBOLS[self.numbers[sl]]),
            cell=cell, pbc=f["pbc"][j].astype(bool),
            energy=energy if np.isfinite(energy) else None,
            forces=np.array(self.forces[sl]) if f["has_forces"][j] else None,
            charges=np.array(self.charges[sl]) if f["has_charges"][j] else None,
            total_charge=total_charge if np.isfinite(total_charge) else None,
            dipole=np.array(dipole) if np.all(np.isfinite(dipole)) else None,
            name=self.names[j], frame=None if frame < 0 else frame)


@dataclass
class DerivativeBlock:
    """Derivative arrays of structures ``start:stop``: ``arrays[key]`` rows with
    local offsets ``offsets[key]`` (k+1,); ``present`` (k,) bool."""

    start: int
    stop: int
    arrays: dict[str, np.ndarray]
    offsets: dict[str, np.ndarray]
    present: np.ndarray

    def arrays_of(self, j: int) -> dict[str, np.ndarray] | None:
        if not self.present[j]:
            return None
        return {k: v[int(self.offsets[k][j]):int(self.offsets[k][j + 1])]
                for k, v in self.arrays.items()}


class DatabaseReader:
    """Read-only view of one database file.

    Parameters
    ----------
    path:
        The database.  Unknown or newer schema versions raise :class:`SchemaError`.
    cache_size:
        Structures whose decoded block stays in this process's LRU cache (per
        kind: base data with features, derivatives).  ``0`` disables it.
    block_structures:
        Decode unit; default: the writer's flush unit stored in the file.
    """

    def __init__(self, path: str | os.PathLike, *, cache_size: int = 2048,
                 block_structures: int | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"database {self.path} does not exist")
        if not self.path.is_file():
            raise SchemaError(f"{self.path}: not a database file (a directory?)")
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        h5 = self._file()
        try:
            self._read_attrs(h5)
            check_structure(h5, self.path, h5.attrs["n_structures"], h5.attrs["n_atoms"],
                            self.layout)
        except BaseException as exc:
            self._h5.close()
            self._h5 = None
            if isinstance(exc, (KeyError, ValueError, TypeError)):
                # a root attribute missing or not what the schema says (bad JSON too)
                raise SchemaError(f"{self.path}: malformed nnpflow database "
                                  f"({type(exc).__name__}: {exc})") from None
            raise
        self.block_structures = int(block_structures or self.layout["block_structures"])
        if self.block_structures < 1:
            raise ValueError("block_structures must be >= 1")
        self.cache_size = int(cache_size)
        n_blocks = 0 if self.cache_size <= 0 else max(1, -(-self.cache_size // self.block_structures))
        self._blocks = LRUCache(n_blocks)
        self._dblocks = LRUCache(n_blocks)
        self._index: dict[str, Any] | None = None
        self._parts: list[_Part] | None = None
        self._doffsets: dict[str, dict[str, np.ndarray]] = {}
        self._shared_numbers: dict[str, np.ndarray] = {}
        self._dsets: dict[str, dict[str, h5py.Dataset]] = {}
        self._descriptors: dict[tuple, Any] = {}

    def _read_attrs(self, h5: h5py.File) -> None:
        self.schema_version = check_schema(h5, str(self.path))
        if not bool(h5.attrs.get("complete", False)):
            raise SchemaError(f"{self.path}: database is incomplete (its writer did not finish)")
        self.layout: dict[str, Any] = json_attr(h5, "layout")
        if not isinstance(self.layout, dict) or "block_structures" not in self.layout:
            raise SchemaError(f"{self.path}: malformed nnpflow database (no layout "
                              "attribute with block_structures)")
        self.n_structures = int(h5.attrs["n_structures"])
        self.n_atoms_total = int(h5.attrs["n_atoms"])
        self.species: list[str] = json_attr(h5, "species", [])
        self.descriptor_config: dict | None = json_attr(h5, "descriptor")
        sha = h5.attrs.get("descriptor_sha256")
        self.descriptor_sha256: str | None = (sha.decode() if isinstance(sha, bytes) else sha)
        self.sources: dict = json_attr(h5, "sources", {})
        self.filter: dict = json_attr(h5, "filter", {})
        self.statistics: dict = json_attr(h5, "statistics")
        self.structures_fingerprint: str = str(h5.attrs["structures_fingerprint"])
        self.fingerprint: str = str(h5.attrs["fingerprint"])
        # an index over shard files (merge with link=True): its shards must be there
        # and unchanged since the merge
        check_linked_parts(h5, self.path)

    # ------------------------------------------------------------ file handle
    def _file(self) -> h5py.File:
        pid = os.getpid()
        if self._h5 is None or self._pid != pid:
            if self._h5 is not None:
                # a handle inherited through fork: close this process's copy only
                # (decoded blocks are plain arrays and stay valid)
                try:
                    self._h5.close()
                except Exception:  # pragma: no cover - defensive
                    pass
            self._dsets = {}
            self._h5 = None
            try:
                self._h5 = h5py.File(self.path, "r", rdcc_nbytes=RDCC_NBYTES,
                                     rdcc_nslots=RDCC_NSLOTS)
            except (FileNotFoundError, PermissionError):
                raise
            except OSError as exc:  # no HDF5 signature, truncated, damaged
                raise SchemaError(f"{self.path}: not a readable HDF5 database ({exc}); "
                                  "a truncated or damaged file, or not a database at all"
                                  ) from None
            self._pid = pid
        return self._h5

    def close(self) -> None:
        """Close this process's handle and drop cached blocks (reopens on next use)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._pid = None
        self._dsets = {}
        self._blocks.clear()
        self._dblocks.clear()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_h5"] = None
        state["_pid"] = None
        state["_dsets"] = {}
        state["_blocks"] = LRUCache(self._blocks.maxsize)
        state["_dblocks"] = LRUCache(self._dblocks.maxsize)
        return state

    def __enter__(self) -> "DatabaseReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

    def __len__(self) -> int:
        return self.n_structures

    def __repr__(self) -> str:
        return (f"DatabaseReader({str(self.path)!r}, structures={self.n_structures}, "
                f"features={self.has_features}, derivatives={self.has_force_derivatives})")

    # ---------------------------------------------------------------- layout
    @property
    def has_features(self) -> bool:
        return bool(self.layout.get("features"))

    @property
    def has_force_derivatives(self) -> bool:
        return bool(self.layout.get("force_derivatives"))

    @property
    def n_features(self) -> int:
        return int(self.layout.get("n_features", 0))

    @property
    def feature_species(self) -> list[str]:
        return list(self.layout.get("feature_species", []))

    @property
    def dtype(self) -> str:
        return self.layout["dtype"]

    @property
    def meta(self) -> dict[str, Any]:
        """All root attributes, JSON ones decoded."""
        h5 = self._file()
        out = {}
        for key, value in h5.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, str) and value[:1] in "{[":
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            elif isinstance(value, np.generic):
                value = value.item()
            out[key] = value
        return out

    def descriptor(self, device: str = "cpu", dtype: Any = None):
        """The persisted descriptor as a ``ChebyshevDescriptor`` (``SchemaError``
        if none was persisted); built once per device and dtype."""
        if self.descriptor_config is None:
            raise SchemaError(f"{self.path}: no descriptor was persisted in this database; "
                              "pass a descriptor")
        key = (str(device), str(dtype))
        found = self._descriptors.get(key)
        if found is None:
            from ..descriptors import ChebyshevDescriptor
            kwargs = {"device": device}
            if dtype is not None:
                kwargs["dtype"] = dtype
            found = self._descriptors[key] = ChebyshevDescriptor.from_config(
                self.descriptor_config, **kwargs)
        return found

    # ----------------------------------------------------------------- parts
    def _load_parts(self) -> list["_Part"]:
        if self._parts is None:
            h5 = self._file()
            n_parts = int(h5.attrs["n_parts"])
            parts = []
            start = block = 0
            for p in range(n_parts):
                g = h5[f"{PARTS}/{p}"]
                n = int(g.attrs["n_structures"])
                k = self.block_structures
                parts.append(_Part(index=p, name=f"{PARTS}/{p}", start=start, n=n,
                                   n_atoms=int(g.attrs["n_atoms"]),
                                   species_layout=str(g.attrs["species_layout"]),
                                   derivative_keys=json.loads(g.attrs["derivative_keys"]),
                                   block_base=block, n_blocks=-(-n // k)))
                start += n
                block += -(-n // k)
            if start != self.n_structures:
                raise SchemaError(f"{self.path}: parts hold {start} structures, "
                                  f"the file says {self.n_structures}")
            self._parts = parts
            self._part_starts = np.array([q.start for q in parts] + [start], dtype=np.int64)
            self._block_bases = np.array([q.block_base for q in parts] + [block], dtype=np.int64)
        return self._parts

    @property
    def n_blocks(self) -> int:
        self._load_parts()
        return int(self._block_bases[-1])

    def _part_of(self, i: int) -> "_Part":
        parts = self._load_parts()
        return parts[int(np.searchsorted(self._part_starts, i, side="right")) - 1]

    # ----------------------------------------------------------------- index
    def _load_index(self) -> dict[str, np.ndarray]:
        if self._index is None:
            h5 = self._file()
            offsets, energy, forces = [], [], []
            for part in self._load_parts():
                st = h5[part.name][STRUCTURES]
                offsets.append(st["atom_offset"][:])
                energy.append(st["energy"][:])
                forces.append(st["has_forces"][:].astype(bool))
            n_atoms = (np.concatenate([np.diff(o) for o in offsets]) if offsets
                       else np.zeros(0, dtype=np.int64))
            self._index = {
                "part_atom_offset": offsets,
                "atom_offset": np.concatenate(([0], np.cumsum(n_atoms))).astype(np.int64),
                "n_atoms": n_atoms,
                "energy": np.concatenate(energy) if energy else np.zeros(0),
                "has_forces": np.concatenate(forces) if forces else np.zeros(0, dtype=bool),
            }
        return self._index

    @property
    def atom_offset(self) -> np.ndarray:
        """(S+1,) offsets of each structure's atoms (over the whole database)."""
        return self._load_index()["atom_offset"]

    @property
    def n_atoms(self) -> np.ndarray:
        """(S,) atoms per structure."""
        return self._load_index()["n_atoms"]

    @property
    def energies(self) -> np.ndarray:
        """(S,) total energies in eV (NaN where missing)."""
        return self._load_index()["energy"]

    @property
    def has_forces(self) -> np.ndarray:
        """(S,) bool: structure has forces."""
        return self._load_index()["has_forces"]

    def _check(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.n_structures
        if not 0 <= i < self.n_structures:
            raise IndexError(f"structure index {i} out of range for {self.n_structures} structures")
        return i

    # ---------------------------------------------------------------- blocks
    def block_of(self, i: int) -> tuple[int, int]:
        """``(block index, position in block)`` of structure ``i``.  Blocks hold
        ``block_structures`` consecutive structures of one part."""
        i = self._check(i)
        part = self._part_of(i)
        b, j = divmod(i - part.start, self.block_structures)
        return part.block_base + b, j

    def locate(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`block_of`: ``(blocks, positions)`` int64 arrays (B,)
        for structure indices (B,) (negative ones count from the end)."""
        self._load_parts()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self.n_structures
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"structure index out of range for {n} structures")
        idx = np.where(idx < 0, idx + n, idx)
        p = np.searchsorted(self._part_starts, idx, side="right") - 1
        b, j = np.divmod(idx - self._part_starts[p], self.block_structures)
        return self._block_bases[p] + b, j

    def block_range(self, b: int) -> tuple[int, int]:
        """Global structure range ``(start, stop)`` of block ``b``."""
        part, s0, s1 = self._block_location(b)
        return part.start + s0, part.start + s1

    def _block_location(self, b: int) -> tuple["_Part", int, int]:
        self._load_parts()
        if not 0 <= b < self.n_blocks:
            raise IndexError(f"block {b} out of range for {self.n_blocks} blocks")
        p = int(np.searchsorted(self._block_bases, b, side="right")) - 1
        part = self._parts[p]
        s0 = (b - part.block_base) * self.block_structures
        return part, s0, min(part.n, s0 + self.block_structures)

    def _datasets(self, part: "_Part") -> dict[str, h5py.Dataset]:
        """This process's dataset handles of a part (looking a dataset up by name
        costs more than reading a small slice of it)."""
        h5 = self._file()
        found = self._dsets.get(part.name)
        if found is None:
            found = {}
            g = h5[part.name]

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    found[name] = obj
            g.visititems(visit)
            self._dsets[part.name] = found
        return found

    def block(self, b: int) -> Block:
        """Decoded block ``b`` (cached)."""
        return self._blocks.get_or_create(b, lambda: self._read_block(b))

    def _numbers(self, part: "_Part", a0: int, a1: int, k: int) -> np.ndarray:
        ds = self._datasets(part)["atoms/numbers"]
        if part.species_layout == "shared":
            shared = self._shared_numbers.get(part.name)
            if shared is None:
                shared = self._shared_numbers[part.name] = ds[:]
            return np.tile(shared, k)
        return ds[a0:a1]

    def _read_block(self, b: int) -> Block:
        part, s0, s1 = self._block_location(b)
        d = self._datasets(part)
        offs = self._load_index()["part_atom_offset"][part.index][s0:s1 + 1]
        a0, a1 = int(offs[0]), int(offs[-1])
        noff = d["structures/name_offset"][s0:s1 + 1]
        raw = d["structures/name_bytes"][int(noff[0]):int(noff[-1])].tobytes()
        rel = (noff - noff[0]).tolist()
        names = [raw[rel[j]:rel[j + 1]].decode("utf-8") for j in range(s1 - s0)]
        fields = {name: d[f"structures/{name}"][s0:s1]
                  for name in STRUCTURE_FIELDS if name != "content_hash"}
        forces = (d["atoms/forces"][a0:a1]
                  if ("atoms/forces" in d and fields["has_forces"].any()) else None)
        charges = (d["atoms/charges"][a0:a1]
                   if ("atoms/charges" in d and fields["has_charges"].any()) else None)
        features = d["features/values"][a0:a1] if self.has_features else None
        numbers = self._numbers(part, a0, a1, s1 - s0)
        if part.species_layout != "shared" and self.n_atoms_total > OPEN_NUMBERS_LIMIT:
            # smaller files had every atomic number checked on open
            check_numbers(numbers, self.path, f"/{part.name}/atoms/numbers",
                          part.start + s0, offs - a0)
        return Block(start=part.start + s0, stop=part.start + s1, atom_offset=offs - a0,
                     names=names, fields=fields, positions=d["atoms/positions"][a0:a1],
                     numbers=numbers,
                     forces=forces, charges=charges, features=features)

    def derivative_block(self, b: int) -> DerivativeBlock:
        """Decoded derivative arrays of block ``b`` (cached separately)."""
        if not self.has_force_derivatives:
            raise SchemaError(f"{self.path}: no force derivatives were persisted")
        return self._dblocks.get_or_create(b, lambda: self._read_derivative_block(b))

    def _derivative_offsets(self, part: "_Part") -> dict[str, np.ndarray]:
        offs = self._doffsets.get(part.name)
        if offs is None:
            d = self._datasets(part)
            offs = self._doffsets[part.name] = {k: d[f"derivatives/{k}_offset"][:]
                                                for k in part.derivative_keys}
        return offs

    def _read_derivative_block(self, b: int) -> DerivativeBlock:
        part, s0, s1 = self._block_location(b)
        d = self._datasets(part)
        arrays, offsets = {}, {}
        for key, offs in self._derivative_offsets(part).items():
            o = offs[s0:s1 + 1]
            arrays[key] = d[f"derivatives/{key}"][int(o[0]):int(o[-1])]
            offsets[key] = o - o[0]
        block = DerivativeBlock(part.start + s0, part.start + s1, arrays, offsets,
                                d["derivatives/present"][s0:s1].astype(bool))
        if {"edge_center", "edge_neighbor"} <= set(arrays):
            n_atoms = np.diff(self._load_index()["part_atom_offset"][part.index][s0:s1 + 1])
            self._check_edges(block, n_atoms)
        return block

    def _check_edges(self, block: DerivativeBlock, n_atoms: np.ndarray) -> None:
        """Validate a decoded block's edge arrays once (so batches built from
        cached blocks need no per-structure checks): matching per-structure
        counts, atom indices inside each structure, edges grouped by centre."""
        center, neighbor = block.arrays["edge_center"], block.arrays["edge_neighbor"]
        counts = np.diff(block.offsets["edge_center"])
        bad = None
        for key in block.arrays:
            differ = np.flatnonzero(np.diff(block.offsets[key]) != counts)
            if differ.size:
                bad = (int(differ[0]), f"{key} has another edge count than edge_center")
                break
        if bad is None and center.size:
            limit = np.repeat(n_atoms, counts)
            wrong = (center < 0) | (center >= limit) | (neighbor < 0) | (neighbor >= limit)
            first = np.cumsum(counts) - counts            # first edge of each structure
            down = np.flatnonzero(np.diff(center) < 0) + 1
            down = down[~np.isin(down, first)]
            if wrong.any():
                e = int(np.flatnonzero(wrong)[0])
                bad = (int(np.searchsorted(first, e, side="right")) - 1,
                       "derivative edge indices outside the structure's atoms")
            elif down.size:
                bad = (int(np.searchsorted(first, down[0], side="right")) - 1,
                       "derivative edges are not grouped by centre atom")
        if bad is not None:
            j, reason = bad
            raise SchemaError(f"{self.path}: structure {block.start + j}: {reason}")

    # ------------------------------------------------------------ per sample
    def structure(self, i: int) -> Structure:
        """Structure ``i`` (Å, eV, eV/Å)."""
        b, j = self.block_of(i)
        return self.block(b).structure(j)

    def structures(self, indices: Iterable[int]) -> list[Structure]:
        return [self.structure(i) for i in indices]

    def iter_structures(self, start: int = 0, stop: int | None = None) -> Iterator[Structure]:
        """Structures ``start:stop`` in order, block by block (bounded memory)."""
        stop = self.n_structures if stop is None else min(stop, self.n_structures)
        i = start
        while i < stop:
            b, _ = self.block_of(i)
            blk = self._read_block(b) if self._blocks.maxsize == 0 else self.block(b)
            end = min(blk.stop, stop)
            for g in range(i, end):
                yield blk.structure(g - blk.start)
            i = end

    def name(self, i: int) -> str:
        b, j = self.block_of(i)
        return self.block(b).names[j]

    def features(self, i: int) -> np.ndarray:
        """Persisted raw features of structure ``i``, (N, F) in the storage dtype."""
        if not self.has_features:
            raise SchemaError(f"{self.path}: no features were persisted")
        b, j = self.block_of(i)
        blk = self.block(b)
        return blk.features[blk.atoms(j)]

    def features_batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Persisted features of several structures at once: ``(features (A, F),
        atom_offset (B+1,))`` in the order of ``indices`` (read block by block)."""
        if not self.has_features:
            raise SchemaError(f"{self.path}: no features were persisted")
        parts = []
        for i in indices:
            b, j = self.block_of(i)
            blk = self.block(b)
            parts.append(blk.features[blk.atoms(j)])
        counts = [len(p) for p in parts]
        feats = (np.concatenate(parts) if parts
                 else np.zeros((0, self.n_features), dtype=self.dtype))
        return feats, np.concatenate(([0], np.cumsum(counts))).astype(np.int64)

    def derivative_arrays(self, i: int) -> dict[str, np.ndarray] | None:
        """The stored ``to_arrays()`` dict of structure ``i`` (``None`` when the
        structure has no stored derivatives, e.g. it has no forces)."""
        b, j = self.block_of(i)
        return self.derivative_block(b).arrays_of(j)

    def species_index(self, i: int, species_to_idx: Mapping[str, int]) -> np.ndarray:
        """(N,) int64 indices of structure ``i``'s atoms in ``species_to_idx``."""
        b, j = self.block_of(i)
        blk = self.block(b)
        return species_lookup(species_to_idx)[blk.numbers[blk.atoms(j)]]

    def derivatives(self, i: int, descriptor: Any = None):
        """Structure ``i``'s ``DescriptorDerivatives`` rebuilt from the stored
        arrays (``None`` without stored derivatives).  ``descriptor`` defaults to
        the persisted one."""
        arrays = self.derivative_arrays(i)
        if arrays is None:
            return None
        if descriptor is None:
            descriptor = self.descriptor()
        import torch
        from ..descriptors import DescriptorDerivatives
        sidx = torch.from_numpy(self.species_index(i, descriptor.species_to_idx))
        return DescriptorDerivatives.from_arrays(arrays, sidx, descriptor)

    # ------------------------------------------------------------- statistics
    def statistics_object(self) -> DatabaseStatistics:
        return DatabaseStatistics.from_dict(self.statistics)

    def feature_statistics(self, indices: Sequence[int] | np.ndarray | None = None
                           ) -> dict[str, dict[str, Any]]:
        """Exact per-species statistics of the raw features over structures
        ``indices`` (all when ``None``); duplicates count as often as they occur.

        Returns ``{species: {"count": atoms, "mean": (F,), "std": (F,)}}`` with
        population std; species without atoms in the subset get count 0 and NaN
        mean/std.  Read in bounded memory from the per-structure moments.
        """
        if not self.has_features:
            raise SchemaError(f"{self.path}: no features were persisted")
        species = self.feature_species
        n_feat = self.n_features
        if indices is None:
            stats = self.statistics_object().features
            return {s: {"count": stats[s].count, "mean": np.array(stats[s].mean),
                        "std": np.array(stats[s].std)} for s in species}
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.n_structures or idx.max() >= self.n_structures):
            raise IndexError("feature_statistics: index out of range")
        idx = np.where(idx < 0, idx + self.n_structures, idx)
        uniq, mult = np.unique(idx, return_counts=True)
        total = [Moments.empty((n_feat,)) for _ in species]
        window = max(self.block_structures, (8 << 20) // max(1, 16 * len(species) * n_feat))
        h5 = self._file()
        for part in self._load_parts():
            lo_i = int(np.searchsorted(uniq, part.start))
            hi_i = int(np.searchsorted(uniq, part.start + part.n))
            fg = h5[part.name][FEATURES]
            local, local_mult = uniq[lo_i:hi_i] - part.start, mult[lo_i:hi_i]
            pos = 0
            while pos < len(local):
                lo = int(local[pos])
                hi = min(part.n, lo + window)
                end = int(np.searchsorted(local, hi))
                rows = local[pos:end] - lo
                m = local_mult[pos:end]
                count = fg["species_count"][lo:hi][rows] * m[:, None]
                mean = fg["species_mean"][lo:hi][rows]
                m2 = fg["species_m2"][lo:hi][rows] * m[:, None, None]
                n, mu, mm = combine_groups(count, mean, m2)
                for t in range(len(species)):
                    if n[t]:
                        total[t] = total[t].merge(Moments(int(n[t]), mu[t], mm[t],
                                                          np.full(n_feat, np.inf),
                                                          np.full(n_feat, -np.inf)))
                pos = end
        return {s: {"count": total[t].count, "mean": np.array(total[t].mean),
                    "std": np.array(total[t].std)} for t, s in enumerate(species)}

    def composition(self, species: Sequence[str]) -> np.ndarray:
        """(S, T) int64 counts of each of ``species`` in every structure (atoms of
        other species are not counted); read part by part in bounded memory."""
        lookup = species_lookup({s: t for t, s in enumerate(species)})
        t = len(species)
        out = np.zeros((self.n_structures, t), dtype=np.int64)
        h5 = self._file()
        offsets = self._load_index()["part_atom_offset"]
        for part in self._load_parts():
            if part.n == 0:
                continue
            at = h5[part.name][ATOMS]
            offs = offsets[part.index]
            if part.species_layout == "shared":
                sidx = lookup[at["numbers"][:]]
                row = np.bincount(sidx[sidx >= 0], minlength=t)
                out[part.start:part.start + part.n] = row
                continue
            step = max(1, (1 << 22) // max(1, int(offs[-1]) // max(1, part.n)))
            for lo in range(0, part.n, step):
                hi = min(part.n, lo + step)
                a0, a1 = int(offs[lo]), int(offs[hi])
                sidx = lookup[at["numbers"][a0:a1]]
                struct = np.repeat(np.arange(hi - lo), np.diff(offs[lo:hi + 1]))
                keep = sidx >= 0
                counts = np.bincount(struct[keep] * t + sidx[keep], minlength=(hi - lo) * t)
                out[part.start + lo:part.start + hi] = counts.reshape(hi - lo, t)
        return out

    def iter_labels(self) -> Iterator[tuple[str, str]]:
        """``(source label, content hash hex)`` of every structure, in order,
        read part by part in bounded memory."""
        h5 = self._file()
        step = 1 << 15
        for part in self._load_parts():
            st = h5[part.name][STRUCTURES]
            for lo in range(0, part.n, step):
                hi = min(part.n, lo + step)
                noff = st["name_offset"][lo:hi + 1]
                raw = st["name_bytes"][int(noff[0]):int(noff[-1])].tobytes()
                rel = noff - noff[0]
                hashes = st["content_hash"][lo:hi]
                for j in range(hi - lo):
                    yield (raw[int(rel[j]):int(rel[j + 1])].decode("utf-8"),
                           bytes(hashes[j]).hex())

    def content_hashes(self) -> list[str]:
        """SHA-256 content hash (hex) of every structure, in order."""
        return [h for _, h in self.iter_labels()]

    def names(self) -> list[str]:
        """Every structure's source label, in order."""
        return [n for n, _ in self.iter_labels()]


def _storage(group: h5py.Group) -> tuple[int, int]:
    """(stored bytes, logical bytes) of all datasets under ``group``."""
    stored = logical = 0

    def visit(_name, obj):
        nonlocal stored, logical
        if isinstance(obj, h5py.Dataset):
            stored += obj.id.get_storage_size()
            logical += obj.size * obj.dtype.itemsize
    group.visititems(visit)
    return stored, logical


def database_info(path: str | os.PathLike, check: bool = False) -> dict[str, Any]:
    """Summary of a database: counts, species, descriptor, layout, sizes,
    fingerprints, sources, filter and statistics (JSON-compatible).

    Opening the file runs the structural checks of
    :func:`nnpflow.database.validation.check_structure`; ``check=True`` also
    reads every array (:func:`~nnpflow.database.validation.check_arrays`) and
    adds ``"check": {"structures", "atoms", "derivative_rows"}`` (what was read).
    Either raises :class:`SchemaError` naming the file and the inconsistency."""
    with DatabaseReader(path, cache_size=0) as reader:
        checked = check_arrays(reader) if check else None
        h5 = reader._file()
        sizes = {}
        for part in reader._load_parts():
            for group in (STRUCTURES, ATOMS, FEATURES, DERIVATIVES):
                if group in h5[part.name]:
                    stored, logical = _storage(h5[part.name][group])
                    entry = sizes.setdefault(group, {"stored_bytes": 0, "uncompressed_bytes": 0})
                    entry["stored_bytes"] += int(stored)
                    entry["uncompressed_bytes"] += int(logical)
        file_bytes = os.path.getsize(reader.path)
        shards = linked_files(reader.path, linked_parts(h5))
        # an index over shards: the data's bytes are the shards'
        data_bytes = file_bytes + sum(os.path.getsize(p) for p in shards)
        n = reader.n_structures
        return {
            "path": str(reader.path),
            "schema_version": reader.schema_version,
            "n_structures": n,
            "n_atoms": reader.n_atoms_total,
            "n_parts": len(reader._load_parts()),
            "species": reader.species,
            "descriptor": reader.descriptor_config,
            "descriptor_sha256": reader.descriptor_sha256,
            "layout": reader.layout,
            "fingerprint": reader.fingerprint,
            "structures_fingerprint": reader.structures_fingerprint,
            "sources": reader.sources,
            "filter": reader.filter,
            "statistics": reader.statistics,
            "file_bytes": int(file_bytes),
            "linked_files": [str(p) for p in shards],
            "data_bytes": int(data_bytes),
            "bytes_per_structure": (data_bytes / n) if n else None,
            "sizes": sizes,
            **({"check": checked} if checked is not None else {}),
        }
