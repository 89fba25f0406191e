"""Datahub: read a train.yaml data set once, keep it as processed HDF5, reuse it.

The processed data lives in ``<DIR>/processed_dataset_<hash>/``:

* ``dataset.h5`` -- the structures after field mapping and transforms, in the
  nnpflow database schema (:mod:`nnpflow.database`); ``compression: true`` stores
  per-frame atomic numbers once when every frame shares them;
* ``datahub.json`` -- the hash, everything it was computed from, the number of
  structures and the targets present;
* ``split_<key>.json`` -- saved splits (:mod:`nnpflow.training.splitter`).

The hash is the SHA-256 of the canonical JSON of: the SHA-256 of the data
file's content, ``data_format``, the ``features``/``targets`` mapping, the
transforms (with the SHA-256 of the ``atomic_energy`` CSV's content, not its
path), ``compression`` and :data:`DATAHUB_SCHEMA_VERSION`.  Editing the data
file, the mapping, a transform or the reference energies therefore gives a new
folder; ``preload: true`` reuses a folder only on an exact match.

Readers: ``pickle``/``npz`` go through :func:`nnpflow.io.pickle_frames.read_frames`
(mapping and transforms there), ``extxyz``/``xsf`` through
:func:`nnpflow.io.read_structures`, ``hdf5`` (an nnpflow database) through
:class:`nnpflow.database.DatabaseReader`; for the last three the transforms
are applied here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from ..energy_reference import read_atomic_energy_csv, reference_energy
from ..errors import ConfigError, InputError, SchemaError
from ..safe_write import canonical_json, write_json
from ..structure import Structure

DATAHUB_SCHEMA_VERSION = 1
DATASET_FILE = "dataset.h5"
INFO_FILE = "datahub.json"

#: Structure attribute of each target
TARGET_ATTRIBUTES = {"E": "energy", "Fa": "forces", "Qa": "charges", "Q": "total_charge",
                     "M2": "dipole"}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's content; ``InputError`` naming it when unreadable."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise InputError(f"cannot read data file: {exc.strerror}", source=os.fspath(path)) from None
    return h.hexdigest()


def hash_inputs(datahub: Mapping) -> dict:
    """Everything the processed data depends on (JSON-compatible)."""
    ae = datahub["transforms"]["atomic_energy"]
    return {
        "schema_version": DATAHUB_SCHEMA_VERSION,
        "data_sha256": file_sha256(datahub["data_path"]),
        "data_format": datahub["data_format"],
        "features": dict(sorted(datahub["features"].items())),
        "targets": dict(sorted(datahub["targets"].items())),
        "transforms": {"atomic_energy_sha256": None if ae is None else file_sha256(ae),
                       "negative_gradient": bool(datahub["transforms"]["negative_gradient"])},
        "compression": bool(datahub["compression"]),
    }


def datahub_hash(datahub: Mapping) -> str:
    """The processed-data hash of a resolved Datahub section (see the module docstring)."""
    return hashlib.sha256(canonical_json(hash_inputs(datahub)).encode()).hexdigest()


@dataclass
class ProcessedData:
    """A processed data set: its folder, hash and contents."""

    directory: Path
    hash: str
    n_structures: int
    targets: list[str]
    features: list[str]
    reused: bool
    _structures: list[Structure] | None = field(default=None, repr=False)
    #: the database file when it is not ``directory/dataset.h5`` (the workflow's database)
    database_file: Path | None = None

    @property
    def database(self) -> Path:
        return Path(self.database_file) if self.database_file is not None else \
            self.directory / DATASET_FILE

    @property
    def in_memory(self) -> bool:
        """The structures were given in memory (else they are read from :attr:`database`)."""
        return self._structures is not None

    def structures_at(self, indices) -> Iterator[Structure]:
        """Structures ``indices``, one at a time (from memory, else from the database)."""
        if self._structures is not None:
            for i in indices:
                yield self._structures[int(i)]
            return
        from ..database import DatabaseReader

        with DatabaseReader(self.database, cache_size=0) as reader:
            for i in indices:
                yield reader.structure(int(i))

    def structures(self) -> list[Structure]:
        """All structures (loaded once, then kept)."""
        if self._structures is None:
            from ..database import DatabaseReader

            with DatabaseReader(self.database) as reader:
                self._structures = list(reader.iter_structures())
        return self._structures


# ------------------------------------------------------------------ reading
def _apply_transforms(structures: Iterator[Structure], transforms: Mapping) -> Iterator[Structure]:
    refs = (read_atomic_energy_csv(transforms["atomic_energy"])
            if transforms["atomic_energy"] is not None else None)
    for s in structures:
        changes = {}
        if refs is not None and s.energy is not None:
            changes["energy"] = s.energy - reference_energy(s.species, refs)
        if transforms["negative_gradient"] and s.forces is not None:
            changes["forces"] = -s.forces
        yield s.copy(**changes) if changes else s


def read_source(datahub: Mapping) -> Iterator[Structure]:
    """Structures of the Datahub's data file, mapped and transformed."""
    fmt, path = datahub["data_format"], datahub["data_path"]
    if not os.path.exists(path):
        raise InputError("data file not found (Datahub.data_path)", source=path)
    if fmt in ("pickle", "npz"):
        from ..io.pickle_frames import read_frames

        if not datahub["targets"]:
            raise ConfigError("Datahub.targets: map at least one target (E, Fa, Qa, Q, M2) "
                              "to a key of the data file")
        features = {"Ra": "Ra", "Za": "Za", **datahub["features"]}
        transforms = {k: v for k, v in datahub["transforms"].items() if v not in (None, False)}
        return read_frames(path, features=features, targets=datahub["targets"],
                           transforms=transforms or None)
    if fmt == "hdf5":
        from ..database import DatabaseReader

        def from_database():
            with DatabaseReader(path) as reader:
                yield from reader.iter_structures()
        return _neutral_unless_given(_apply_transforms(from_database(), datahub["transforms"]),
                                     datahub)
    from ..io import read_structures

    return _neutral_unless_given(_apply_transforms(read_structures(path, format=fmt),
                                                   datahub["transforms"]), datahub)


def _neutral_unless_given(structures: Iterator[Structure], datahub: Mapping
                          ) -> Iterator[Structure]:
    """``Q: null`` (features or targets): a structure without a total charge is neutral
    (Enerzyme's rule; the pickle reader applies it itself)."""
    if None not in (datahub["features"].get("Q", "-"), datahub["targets"].get("Q", "-")):
        yield from structures
        return
    for s in structures:
        yield s.copy(total_charge=0.0) if s.total_charge is None else s


def _targets_present(structures: list[Structure], datahub: Mapping) -> list[str]:
    """Targets every structure carries; the mapped targets must all be there."""
    wanted = list(datahub["targets"])
    present = []
    for name in ("E", "Fa", "Qa", "Q", "M2"):
        attr = TARGET_ATTRIBUTES[name]
        missing = [s for s in structures if getattr(s, attr) is None]
        if not missing:
            present.append(name)
        elif name in wanted:
            s = missing[0]
            raise InputError(f"target {name} ({attr}) missing in {len(missing)} of "
                             f"{len(structures)} structures", source=s.name or datahub["data_path"])
    # the total charge is a target whenever it is known: mapped as a target, or as a
    # feature (Enerzyme's tutorial maps Q under features and weights it in the loss)
    keep = set(wanted) | ({"Q"} if "Q" in datahub["features"] else set())
    return [t for t in present if (not wanted and t != "Q") or t in keep]


# ------------------------------------------------------------------ prepare
def prepare_data(datahub: Mapping, out_dir: str | os.PathLike,
                 logger: logging.Logger | None = None,
                 show_progress: bool = False) -> ProcessedData:
    """Process the data set into ``out_dir/processed_dataset_<hash>/`` or reuse it."""
    from ..database import write_database

    log = logger or logging.getLogger(__name__)
    inputs = hash_inputs(datahub)
    digest = hashlib.sha256(canonical_json(inputs).encode()).hexdigest()
    directory = Path(out_dir) / f"processed_dataset_{digest[:16]}"
    info_path = directory / INFO_FILE
    if datahub["preload"] and info_path.exists() and (directory / DATASET_FILE).exists():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("hash") != digest:
            raise SchemaError(f"{info_path}: records hash {info.get('hash')!r}, not {digest}; "
                              "delete the folder")
        log.info("data: reusing %s (%d structures, hash %s)", directory.name,
                 info["n_structures"], digest[:16])
        return ProcessedData(directory, digest, int(info["n_structures"]), list(info["targets"]),
                             list(info["features"]), reused=True)
    log.info("data: processing %s (format %s)", datahub["data_path"], datahub["data_format"])
    structures = []
    for s in read_source(datahub):
        structures.append(s.validate())
    if not structures:
        raise InputError("the data file holds no structures", source=datahub["data_path"])
    targets = _targets_present(structures, datahub)
    features = ["N", "Ra", "Za"] + (["Q"] if "Q" in datahub["features"] else [])
    if "Q" in datahub["features"] and any(s.total_charge is None for s in structures):
        raise InputError("feature Q (total charge) missing in some structures",
                         source=datahub["data_path"])
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        write_database(tmp / DATASET_FILE, structures, shared_species=bool(datahub["compression"]),
                       sources_meta={"data_path": datahub["data_path"], "datahub": inputs},
                       show_progress=show_progress)
        write_json(tmp / INFO_FILE, {"hash": digest, "inputs": inputs,
                                     "data_path": datahub["data_path"],
                                     "n_structures": len(structures), "targets": targets,
                                     "features": features})
        if directory.exists():  # an older copy (preload off): same hash, same content
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("data: wrote %s (%d structures; targets %s; hash %s)", directory.name,
             len(structures), ", ".join(targets) or "none", digest[:16])
    # training reads the structures back from dataset.h5, so a first run and a
    # rerun that reuses the folder see exactly the same data
    return ProcessedData(directory, digest, len(structures), targets, features, reused=False)

