"""``HDF5StructureDataset``: lazy access to an nnpflow database (the
HDF5 dataset of the aenet PyTorch dataset specification (aenet-python's torch_training docs)).

Build once (``mode="build"``, then :meth:`HDF5StructureDataset.build_database`),
load later (``mode="load"``; ``descriptor=None`` recovers the persisted
descriptor), or let ``mode="auto"`` decide.  Reads go through the database
reader's per-process handle and block LRU cache (``in_memory_cache_size``
structures per process), so DataLoader workers each open their own read-only
handle.

Feature precedence for energy-view samples: the trainer-owned runtime cache,
then persisted features (always descriptor-compatible: an incompatible
descriptor is refused when the dataset is opened), then on-the-fly
featurisation.  Force-view samples use persisted derivatives (and persisted
features) without rebuilding neighbour lists when they are stored, else
featurise with derivatives on the fly.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..database.columns import species_lookup
from ..database.reader import _SYMBOLS, DatabaseReader
from ..energy_reference import EnergyFilter
from ..errors import ConfigError, DescriptorMismatchError, InputError, SchemaError
from .base import FeatureDataset

log = logging.getLogger(__name__)

MODES = ("build", "load", "auto")


class HDF5StructureDataset(FeatureDataset):
    """Structures and (optionally) persisted features/derivatives in one HDF5
    database, read lazily.

    Parameters
    ----------
    descriptor:
        The ``ChebyshevDescriptor``.  In load mode ``None`` recovers the
        persisted one; a descriptor that differs from persisted features or
        derivatives raises :class:`~nnpflow.errors.DescriptorMismatchError`.
    database_file:
        The database path.
    sources:
        Structure sources for building (paths, ``Structure``/``ase.Atoms``,
        source collections such as ``TarArchiveXSFSourceCollection``).  In load
        mode, optional: their content hashes are checked against the database.
    mode:
        ``"build"`` (write with :meth:`build_database`), ``"load"`` (read an
        existing database) or ``"auto"`` (load when the database exists and
        matches ``sources``, descriptor and filter; otherwise build on
        :meth:`build_database`).  A file that is not a readable nnpflow database
        (another file, a damaged one, a newer schema) raises
        :class:`~nnpflow.errors.SchemaError` in every mode; auto mode never
        overwrites it.
    max_energy, atomic_energies:
        Build-time filter on the referenced energy per atom (eV/atom) and the
        dataset-owned reference energies (eV).  Loading with ``max_energy``
        filters the loaded entries; ``atomic_energies`` defaults to the
        database's.
    in_memory_cache_size:
        Structures whose decoded blocks stay in each process's LRU cache.
    compression, compression_level:
        Build-time compression (``"gzip"``/``"zlib"``, ``"lzf"``, ``"blosc"``,
        ``"zstd"``, ``"none"``); default gzip level 1.  Rejected in load mode.
    dtype:
        Torch dtype of sample features and forces (float32 default).
    """

    def __init__(self, descriptor: Any = None, database_file: str | os.PathLike | None = None,
                 sources: Any = None, mode: str = "auto", max_energy: float | None = None,
                 atomic_energies: Mapping[str, float] | None = None,
                 in_memory_cache_size: int = 2048, compression: str | None = None,
                 compression_level: int | None = None, *, dtype: Any = torch.float32):
        if database_file is None:
            raise ConfigError("HDF5StructureDataset needs database_file")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self._init_common(descriptor, atomic_energies, dtype)
        self._atomic_energies_given = atomic_energies is not None
        self.database_file = Path(database_file)
        self.sources = sources
        self.mode = mode
        self.max_energy = max_energy
        EnergyFilter(max_energy, atomic_energies)  # validate early
        if int(in_memory_cache_size) < 0:
            raise ConfigError("in_memory_cache_size must be >= 0")
        self.in_memory_cache_size = int(in_memory_cache_size)
        if mode == "load" and (compression is not None or compression_level is not None):
            raise ConfigError("compression and compression_level apply when building; "
                              "a database opened with mode='load' keeps its own")
        from ..database.schema import normalise_compression
        self.compression, self.compression_level = normalise_compression(
            "gzip" if compression is None else compression, compression_level)
        self.reader: DatabaseReader | None = None
        self.build_result = None
        self._db_index: np.ndarray | None = None
        if mode == "build":
            if sources is None:
                raise ConfigError("mode='build' needs sources")
            if descriptor is None:
                raise ConfigError("mode='build' needs a descriptor")
        elif mode == "load":
            if not self.database_file.is_file():
                raise FileNotFoundError(f"database {self.database_file} does not exist "
                                        "(mode='load'); build it first with mode='build'")
            self._open(check_sources=sources is not None)
        else:  # auto
            if self.database_file.is_file() and self._is_current():
                self._open(check_sources=False)
            elif sources is None:
                if self.database_file.is_file():
                    raise DescriptorMismatchError(
                        f"{self.database_file} does not match the given descriptor or "
                        "filter, and no sources were given to rebuild it")
                raise FileNotFoundError(f"database {self.database_file} does not exist and "
                                        "no sources were given to build it")
            elif descriptor is None:
                raise ConfigError("building a database (mode='auto', database missing or "
                                  "stale) needs a descriptor")

    # ------------------------------------------------------------ open/build
    @property
    def needs_build(self) -> bool:
        """True until the database is built (build mode, or auto with a stale file)."""
        return self.reader is None

    def _require(self) -> DatabaseReader:
        if self.reader is None:
            raise RuntimeError(f"database {self.database_file} is not built yet: "
                               "call build_database() first")
        return self.reader

    def _source_hashes(self) -> dict[str, str]:
        from ..sources import as_source_collection
        return as_source_collection(self.sources).content_hashes()

    def _is_current(self) -> bool:
        """Auto mode: does the existing file match sources, descriptor and filter?"""
        try:
            with DatabaseReader(self.database_file, cache_size=0) as r:
                if self.sources is not None:
                    stored = (r.sources or {}).get("content_hashes")
                    if stored != self._source_hashes():
                        log.info("%s: sources changed; it will be rebuilt", self.database_file)
                        return False
                    want = EnergyFilter(self.max_energy, self.atomic_energies).config()
                    from ..database.fingerprint import filter_config
                    if filter_config(r.filter) != filter_config(want):
                        log.info("%s: filter settings changed; it will be rebuilt",
                                 self.database_file)
                        return False
                if (self.descriptor is not None and r.descriptor_sha256 is not None
                        and r.descriptor_sha256 != self.descriptor.fingerprint
                        and (r.has_features or r.has_force_derivatives)):
                    log.info("%s: descriptor changed; it will be rebuilt", self.database_file)
                    return False
            return True
        except SchemaError as exc:
            if _unfinished_database(self.database_file):
                log.info("%s is incomplete; it will be rebuilt", self.database_file)
                return False
            # not ours, damaged, or written by a newer nnpflow: never overwrite it
            raise SchemaError(f"{exc}; mode='auto' does not overwrite it: move it away or "
                              "choose another database_file") from None
        except Exception as exc:  # e.g. a source that cannot be hashed: rebuild
            log.info("%s cannot be used (%s); it will be rebuilt", self.database_file, exc)
            return False

    def _open(self, check_sources: bool, filtered_at_build: bool = False) -> None:
        reader = DatabaseReader(self.database_file, cache_size=self.in_memory_cache_size)
        try:
            self._attach_descriptor(reader)
            if check_sources:
                stored = (reader.sources or {}).get("content_hashes")
                current = self._source_hashes()
                if stored != current:
                    changed = sorted(set(current) ^ set(stored or {}) | {
                        p for p in set(current) & set(stored or {}) if current[p] != stored[p]})
                    raise InputError(f"database {self.database_file} was built from other "
                                     f"sources (changed or missing: {', '.join(changed[:5])}"
                                     f"{' ...' if len(changed) > 5 else ''}); rebuild it")
            if not self._atomic_energies_given:
                self.atomic_energies = dict((reader.filter or {}).get("atomic_energies") or {})
            missing = sorted(set(reader.species) - set(self.descriptor.species))
            if missing:
                raise DescriptorMismatchError(
                    f"{self.database_file} holds species {', '.join(missing)} that the "
                    f"descriptor's species {list(self.descriptor.species)} lack")
            n_atoms = reader.n_atoms
            if self.atomic_energies:
                species = sorted(self.atomic_energies)
                comp = reader.composition(species)
                present = set(reader.species) - set(species)
                if present:
                    raise ConfigError(f"atomic_energies has no entry for species "
                                      f"{', '.join(sorted(present))}")
                refs = comp @ np.array([self.atomic_energies[s] for s in species])
            else:
                refs = np.zeros(len(reader))
            index = None
            if self.max_energy is not None and not filtered_at_build:
                e = reader.energies
                with np.errstate(invalid="ignore"):
                    keep = np.isfinite(e) & ((e - refs) / n_atoms <= self.max_energy)
                if not keep.all():
                    index = np.flatnonzero(keep)
            self._db_index = index
            sel = slice(None) if index is None else index
            self._energies = reader.energies[sel]
            self._n_atoms = n_atoms[sel]
            self._has_forces = reader.has_forces[sel]
            self._refs = refs[sel]
            self._lookup = species_lookup(self.descriptor.species_to_idx)
        except BaseException:
            reader.close()
            raise
        if self.reader is not None:
            self.reader.close()
        self.reader = reader
        self._init_selection()

    def _attach_descriptor(self, reader: DatabaseReader) -> None:
        stored = reader.descriptor_sha256
        if self.descriptor is None:
            if reader.descriptor_config is None:
                raise DescriptorMismatchError(
                    f"{reader.path} has no persisted descriptor; pass descriptor=...")
            self.descriptor = reader.descriptor()
            return
        mine = self.descriptor.fingerprint
        if stored is None or stored == mine:
            return
        diff = _config_diff(reader.descriptor_config or {}, self.descriptor.config())
        if reader.has_features or reader.has_force_derivatives:
            raise DescriptorMismatchError(
                f"{reader.path} holds features/derivatives of another descriptor "
                f"(stored SHA-256 {stored[:12]}..., given {mine[:12]}...; differences: {diff}); "
                "rebuild the database or load it with descriptor=None")
        warnings.warn(f"{reader.path} records another descriptor ({diff}); its structures are "
                      "featurised on the fly with the given one", stacklevel=3)

    def build_database(self, show_progress: bool = False, build_workers: int = 1,
                       persist_descriptor: bool | None = None, persist_features: bool = False,
                       persist_force_derivatives: bool = False):
        """Build the database from ``sources`` (atomically) and open it.

        ``build_workers`` worker *processes* each build a shard (structures
        assigned by a hash of their source label) that are then merged; with
        more than one worker the database order is shard by shard (see
        :mod:`nnpflow.database.build`).  ``persist_descriptor`` defaults to
        True; persisted features/derivatives always record the descriptor.
        In auto mode a current database that already holds what is asked for
        is kept.  Bad input (an unreadable source, a species outside the
        descriptor's list, two atoms at or below its ``min_cutoff``) raises
        :class:`~nnpflow.errors.InputError` naming it, and no database is
        written.  Returns the :class:`~nnpflow.database.build.BuildResult`
        (``None`` when nothing needed building).
        """
        if self.mode == "load":
            raise ConfigError("mode='load' is read-only; use mode='build' or 'auto' to build")
        if self.sources is None:
            raise ConfigError("build_database needs sources")
        if self.mode == "auto" and self.reader is not None:
            r = self.reader
            want_desc = True if persist_descriptor is None else persist_descriptor
            if ((not persist_features or r.has_features)
                    and (not persist_force_derivatives or r.has_force_derivatives)
                    and (not want_desc or r.descriptor_sha256 is not None)):
                log.info("%s is current; not rebuilt", self.database_file)
                return None
        from ..database.build import build_sharded
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        result = build_sharded(
            self.sources, self.database_file, self.descriptor, n_workers=build_workers,
            persist_features=persist_features, persist_force_derivatives=persist_force_derivatives,
            persist_descriptor=True if persist_descriptor is None else persist_descriptor,
            compression=self.compression, compression_level=self.compression_level,
            max_energy=self.max_energy, atomic_energies=self.atomic_energies or None,
            check_overlaps=True, show_progress=show_progress)
        self.build_result = result
        self._open(check_sources=False, filtered_at_build=True)
        return result

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close this process's file handle (it reopens lazily on next access)."""
        if self.reader is not None:
            self.reader.close()

    def __enter__(self) -> "HDF5StructureDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        self._require()
        return len(self._energies)

    def __repr__(self) -> str:
        state = "not built" if self.reader is None else f"{len(self)} structures"
        return f"HDF5StructureDataset({str(self.database_file)!r}, {state})"

    # ---------------------------------------------------------- properties
    @property
    def fingerprint(self) -> str:
        return self._require().fingerprint

    @property
    def structures_fingerprint(self) -> str:
        return self._require().structures_fingerprint

    @property
    def statistics(self) -> dict:
        return self._require().statistics

    @property
    def has_persisted_features(self) -> bool:
        return self._require().has_features

    @property
    def has_persisted_derivatives(self) -> bool:
        return self._require().has_force_derivatives

    def db_index(self, i: int | np.ndarray) -> Any:
        """Database index of dataset index ``i``."""
        return i if self._db_index is None else self._db_index[i]

    def has_forces(self) -> np.ndarray:
        self._require()
        return self._has_forces

    def energies(self) -> np.ndarray:
        self._require()
        return self._energies

    def n_atoms(self) -> np.ndarray:
        self._require()
        return self._n_atoms

    def reference_energies(self) -> np.ndarray:
        self._require()
        return self._refs

    def compositions(self, species) -> np.ndarray:
        comp = self._require().composition(list(species))
        return comp if self._db_index is None else comp[self._db_index]

    def structure(self, i: int):
        """Structure ``i`` as a ``nnpflow.Structure``."""
        return self._require().structure(int(self.db_index(i)))

    def feature_statistics(self, indices: Sequence[int] | None = None):
        """Exact per-species feature statistics over ``indices`` (all when
        ``None``); cheap with persisted features (stored per-structure moments)."""
        reader = self._require()
        if reader.has_features:
            if indices is None:
                idx = None if self._db_index is None else self._db_index
            else:
                idx = self.db_index(np.asarray(list(indices), dtype=np.int64))
            return reader.feature_statistics(idx)
        return super().feature_statistics(indices)

    # -------------------------------------------------------------- batches
    def get_batch(self, indices, use_forces: bool | None = None):
        """The :class:`~nnpflow.datasets.collate.Batch` of ``indices``.

        With persisted features (and no runtime feature cache) the batch is
        gathered directly from the decoded blocks without building sample
        dicts; its force-view structures with persisted derivatives share one
        ``DescriptorDerivatives`` assembled from the stored edge arrays
        (validated once per decoded block by the reader).  Anything else goes
        through the samples; both give the same batch.
        """
        from .collate import collate_samples
        reader = self._require()
        idx = np.asarray(list(indices), dtype=np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError("batch index out of range")
        idx = np.where(idx < 0, idx + n, idx)
        views = (self._force_mask.numpy()[idx] if use_forces is None
                 else (np.full(idx.shape, bool(use_forces)) & self._has_forces[idx]))
        batch = None
        if (idx.size and reader.has_features and self.runtime_caches.features is None
                and (reader.has_force_derivatives or not views.any())):
            batch = self._gather_batch(idx, views)
        if batch is None:
            batch = collate_samples(self.samples(idx.tolist(), use_forces))
        return batch

    def _gather_batch(self, idx: np.ndarray, views: np.ndarray):
        """The batch of dataset indices ``idx`` with force views ``views``, from
        the persisted features and derivatives of the decoded blocks; ``None``
        when a force-view structure has no stored derivatives."""
        from .collate import batch_from_arrays
        reader = self.reader
        db = idx if self._db_index is None else self._db_index[idx]
        blocks, pos = reader.locate(db)
        decoded: dict = {}
        dblocks: dict = {}
        spans = []                                   # (block, first atom, end atom)
        names = []
        with_forces = self._has_forces[idx]
        keys = ("edge_center", "edge_neighbor", "edge_vector")
        edges: list[list] = [[], [], []]
        for b, j, view in zip(blocks.tolist(), pos.tolist(), views.tolist()):
            entry = decoded.get(b)
            if entry is None:
                blk = reader.block(b)
                entry = decoded[b] = (blk, blk.atom_offset.tolist())
            blk, offs = entry
            spans.append((blk, offs[j], offs[j + 1]))
            names.append(blk.names[j])
            if view:
                dblk = dblocks.get(b)
                if dblk is None:
                    dblk = dblocks[b] = reader.derivative_block(b)
                if not dblk.present[j]:
                    return None
                for k, key in enumerate(keys):
                    o = dblk.offsets[key]
                    edges[k].append(dblk.arrays[key][o[j]:o[j + 1]])
        features = np.concatenate([blk.features[a0:a1] for blk, a0, a1 in spans])
        numbers = np.concatenate([blk.numbers[a0:a1] for blk, a0, a1 in spans])
        positions = np.concatenate([blk.positions[a0:a1] for blk, a0, a1 in spans])
        if with_forces.all():
            forces = np.concatenate([blk.forces[a0:a1] for blk, a0, a1 in spans])
        else:
            forces = np.zeros((len(numbers), 3))
            at = 0
            for (blk, a0, a1), has in zip(spans, with_forces.tolist()):
                if has:
                    forces[at:at + a1 - a0] = blk.forces[a0:a1]
                at += a1 - a0
        n_atoms = self._n_atoms[idx]
        species_index = self._lookup[numbers]
        derivatives = None
        if views.any():
            derivatives = self._batch_derivatives(species_index, n_atoms, views, edges)
        return batch_from_arrays(
            features=torch.from_numpy(features).to(self.dtype),
            species_index=species_index, n_atoms=n_atoms, energy=self._energies[idx],
            reference_energy=self._refs[idx], forces=torch.from_numpy(forces).to(self.dtype),
            has_forces=with_forces, positions=positions, index=idx, names=names,
            use_forces=views, derivatives=derivatives, n_species=len(self.descriptor.species))

    def _batch_derivatives(self, species_index: np.ndarray, n_atoms: np.ndarray,
                           views: np.ndarray, edges: list[list]):
        """One ``DescriptorDerivatives`` of the force-view structures from their
        stored edge arrays (local atom indices offset to the concatenation)."""
        from ..descriptors import DescriptorDerivatives
        counts = n_atoms[views]
        edge_counts = np.fromiter((len(c) for c in edges[0]), dtype=np.int64, count=len(counts))
        shift = np.repeat(np.cumsum(counts) - counts, edge_counts)
        center = np.concatenate(edges[0]).astype(np.int64)
        center += shift
        neighbor = np.concatenate(edges[1]).astype(np.int64)
        neighbor += shift
        vector = np.concatenate(edges[2]) if edges[2] else np.zeros((0, 3), np.float32)
        force_atoms = np.repeat(views, n_atoms)
        desc = self.descriptor
        dev = desc.device
        return DescriptorDerivatives(
            desc, torch.from_numpy(species_index[force_atoms]).to(dev),
            torch.from_numpy(center).to(dev), torch.from_numpy(neighbor).to(dev),
            torch.from_numpy(vector).to(device=dev, dtype=desc.dtype), counts.tolist())

    # -------------------------------------------------------------- samples
    def _samples(self, indices: list[int], use_forces: list[bool]) -> list[dict]:
        reader = self._require()
        descriptor = self.descriptor
        dtype = self.dtype
        caches = self.runtime_caches
        n = len(indices)
        out: list[dict | None] = [None] * n
        feats: list[torch.Tensor | None] = [None] * n
        ders: list[Any] = [None] * n
        loc = []
        for k, i in enumerate(indices):
            b, j = reader.block_of(int(self.db_index(i)))
            loc.append((b, j))
        blocks = {b: reader.block(b) for b, _ in loc}
        need_features: list[int] = []   # energy view or derivatives without features
        need_payload: list[int] = []    # force view computed on the fly
        for k, i in enumerate(indices):
            b, j = loc[k]
            blk = blocks[b]
            if use_forces[k]:
                arrays = None
                if reader.has_force_derivatives:
                    arrays = reader.derivative_block(b).arrays_of(j)
                if arrays is not None:
                    sidx = torch.from_numpy(self._lookup[blk.numbers[blk.atoms(j)]])
                    ders[k] = _from_arrays(arrays, sidx, descriptor)
                    if blk.features is not None:
                        feats[k] = torch.from_numpy(blk.features[blk.atoms(j)]).to(dtype)
                    else:
                        need_features.append(k)
                else:
                    cached = (caches.force_payloads.get(i)
                              if caches.force_payloads is not None else None)
                    if cached is None:
                        need_payload.append(k)
                    else:
                        feats[k], ders[k] = cached
            else:
                cached = caches.features.get(i) if caches.features is not None else None
                if cached is not None:
                    feats[k] = cached
                elif blk.features is not None:
                    f = torch.from_numpy(blk.features[blk.atoms(j)]).to(dtype)
                    feats[k] = f
                    if caches.features is not None:
                        caches.features.put(i, f)
                else:
                    need_features.append(k)
        if need_features:
            structs = [blocks[loc[k][0]].structure(loc[k][1]) for k in need_features]
            for k, f in zip(need_features, descriptor.featurize_batch(structs)):
                f = f.detach().to(dtype)
                feats[k] = f
                if not use_forces[k] and caches.features is not None:
                    caches.features.put(indices[k], f)
        if need_payload:
            from ..database.featurize import split_with_derivatives
            structs = [blocks[loc[k][0]].structure(loc[k][1]) for k in need_payload]
            f_list, d_list = split_with_derivatives(
                descriptor.featurize_batch_with_derivatives(structs), len(structs))
            for k, f, d in zip(need_payload, f_list, d_list):
                feats[k] = f.detach().to(dtype)
                ders[k] = d
                if caches.force_payloads is not None:
                    caches.force_payloads.put(indices[k], (feats[k], d))
        for k, i in enumerate(indices):
            b, j = loc[k]
            out[k] = self._block_sample(i, blocks[b], j, feats[k], use_forces[k], ders[k])
        return out

    def _block_sample(self, i: int, blk, j: int, features: torch.Tensor, use_forces: bool,
                      derivatives: Any) -> dict:
        sl = blk.atoms(j)
        numbers = blk.numbers[sl]
        f = blk.fields
        energy = float(f["energy"][j])
        has_f = bool(f["has_forces"][j])
        return {
            "index": i,
            "name": blk.names[j],
            "features": features,
            "species": list(_SYMBOLS[numbers]),
            "species_index": torch.from_numpy(self._lookup[numbers]),
            "positions": torch.from_numpy(blk.positions[sl]),
            "cell": torch.from_numpy(f["cell"][j]) if f["has_cell"][j] else None,
            "pbc": torch.from_numpy(f["pbc"][j].astype(bool)),
            "n_atoms": sl.stop - sl.start,
            "energy": energy,
            "has_energy": bool(np.isfinite(energy)),
            "reference_energy": float(self._refs[i]),
            "forces": torch.from_numpy(blk.forces[sl]).to(self.dtype) if has_f else None,
            "use_forces": bool(use_forces),
            "derivatives": derivatives,
        }


def _unfinished_database(path: Path) -> bool:
    """True for an nnpflow database whose writer did not finish (``complete``
    false), which auto mode may replace; False for anything else."""
    import h5py
    from ..database.schema import FORMAT
    try:
        with h5py.File(path, "r") as h5:
            fmt = h5.attrs.get("format")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            return fmt == FORMAT and not bool(h5.attrs.get("complete", False))
    except OSError:
        return False


def _from_arrays(arrays: dict, species_index: torch.Tensor, descriptor: Any):
    from ..descriptors import DescriptorDerivatives
    return DescriptorDerivatives.from_arrays(arrays, species_index, descriptor)


def _config_diff(stored: Mapping, given: Mapping) -> str:
    keys = sorted(set(stored) | set(given))
    parts = [f"{k}: stored {stored.get(k)!r} vs given {given.get(k)!r}" for k in keys
             if stored.get(k) != given.get(k)]
    return "; ".join(parts) or "same settings, different fingerprint"
