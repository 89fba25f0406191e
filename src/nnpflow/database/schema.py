"""The nnpflow HDF5 database schema (version 1): names, layout and checks.

The full description, with every dataset, shape, dtype and attribute, is in
``docs/database.md``; this module is its executable form.  In short:

* Root attributes (JSON strings where structured): ``format`` =
  ``"nnpflow-database"``, ``schema_version``, ``complete``, counts, species,
  layout, descriptor config and SHA-256, source content hashes, filter settings,
  statistics (mergeable moments), ``structures_fingerprint`` and ``fingerprint``.
* Structures live in parts (row groups) ``/parts/0``, ``/parts/1``, ... (a
  merge copies each shard's part as it is); each part holds:

  - ``structures/``: one row per structure (S rows), e.g. ``energy`` (S,) eV,
    ``cell`` (S, 3, 3) Å, ``atom_offset`` (S+1,) into the per-atom arrays;
  - ``atoms/``: per-atom arrays concatenated over structures (A rows):
    ``positions`` (A, 3) Å, ``numbers`` (A,) atomic numbers (one structure's
    worth with the *shared* species layout), ``forces`` (A, 3) eV/Å,
    ``charges`` (A,) e;
  - ``features/values`` (A, F): raw descriptor features, rows aligned with
    ``atoms/``; ``features/species_*``: per-structure per-species moments for
    exact statistics of any subset;
  - ``derivatives/<key>`` with ``derivatives/<key>_offset`` (S+1,): the arrays
    of ``DescriptorDerivatives.to_arrays``, each ragged along axis 0.

Everything is chunked along the row axis and compressed; there are no pickles
or object references, so any HDF5 reader can read the file.
"""

from __future__ import annotations

import json
from typing import Any

import h5py

from ..errors import ConfigError, SchemaError

#: value of the root attribute ``format``
FORMAT = "nnpflow-database"
#: schema version written by this code; readers refuse newer or unknown versions
SCHEMA_VERSION = 1
#: schema versions this code can read
READABLE_VERSIONS = frozenset({1})

#: default number of structures per write flush and per decoded read block
DEFAULT_BLOCK_STRUCTURES = 64

#: gzip level when none is given.  With the byte-shuffle filter, level 1 stores
#: features and float32 derivatives within 1 % of level 4's size (0.1029 vs
#: 0.1022 MB per 108-atom Cu/Au cell) and builds ~12 % faster (benchmarks/build_db.py)
DEFAULT_GZIP_LEVEL = 1

# group names: every part (row group) /parts/<k> holds the four groups below
PARTS = "parts"
STRUCTURES = "structures"
ATOMS = "atoms"
FEATURES = "features"
DERIVATIVES = "derivatives"

#: per-structure datasets: name -> (dtype, trailing shape, fill value)
STRUCTURE_FIELDS: dict[str, tuple[str, tuple[int, ...], Any]] = {
    "energy": ("f8", (), float("nan")),        # total energy, eV; NaN = missing
    "cell": ("f8", (3, 3), 0.0),               # lattice vectors as rows, Å
    "has_cell": ("u1", (), 0),
    "pbc": ("u1", (3,), 0),
    "total_charge": ("f8", (), float("nan")),  # e; NaN = missing
    "dipole": ("f8", (3,), float("nan")),      # e·Å; NaN = missing
    "frame": ("i4", (), -1),                   # -1 = not a frame of a multi-frame source
    "has_forces": ("u1", (), 0),
    "has_charges": ("u1", (), 0),
    "content_hash": ("u1", (32,), 0),          # SHA-256 of Structure.content_hash()
}

#: per-atom datasets: name -> (dtype, trailing shape, fill value)
ATOM_FIELDS: dict[str, tuple[str, tuple[int, ...], Any]] = {
    "positions": ("f8", (3,), 0.0),            # Å
    "numbers": ("u1", (), 0),                  # atomic numbers
    "forces": ("f8", (3,), float("nan")),      # eV/Å; NaN where a structure has none
    "charges": ("f8", (), float("nan")),       # e
}

#: names of compression filters accepted by ``compression=``
COMPRESSIONS = ("gzip", "zlib", "lzf", "blosc", "zstd", "none")


def compression_options(compression: str | None, level: int | None) -> dict:
    """``h5py.create_dataset`` keyword arguments for a compression name.

    ``"gzip"`` (alias ``"zlib"``, the name aenet-python's
    torch_training docs use) and ``"lzf"`` are built
    into h5py; ``"blosc"`` (zstd inside blosc) and ``"zstd"`` need the
    ``hdf5plugin`` package.  ``None`` or ``"none"`` stores uncompressed chunks.
    The byte-shuffle filter is added for gzip and zstd (it helps with floats and
    small integers).
    """
    name = "none" if compression is None else str(compression).lower()
    if name not in COMPRESSIONS:
        raise ConfigError(f"unknown compression {compression!r}; choose one of "
                          f"{', '.join(COMPRESSIONS)}")
    if name == "none":
        if level is not None:
            raise ConfigError("compression 'none' takes no compression_level; leave it unset")
        return {}
    if name in ("gzip", "zlib"):
        lvl = DEFAULT_GZIP_LEVEL if level is None else int(level)
        if not 0 <= lvl <= 9:
            raise ConfigError(f"gzip compression_level must be 0..9, got {level!r}")
        return {"compression": "gzip", "compression_opts": lvl, "shuffle": True}
    if name == "lzf":
        if level is not None:
            raise ConfigError("compression 'lzf' has no level; leave compression_level unset")
        return {"compression": "lzf", "shuffle": True}
    try:
        import hdf5plugin
    except ImportError:  # pragma: no cover - hdf5plugin is installed in the venv
        raise ConfigError(f"compression {name!r} needs the hdf5plugin package "
                          "(pip install 'nnpflow[compression]' or pip install hdf5plugin); "
                          "gzip and lzf work without it") from None
    if name == "zstd":
        lvl = 3 if level is None else int(level)
        if not 1 <= lvl <= 22:
            raise ConfigError(f"zstd compression_level must be 1..22, got {level!r}")
        return dict(hdf5plugin.Zstd(clevel=lvl), shuffle=True)
    lvl = 5 if level is None else int(level)
    if not 0 <= lvl <= 9:
        raise ConfigError(f"blosc compression_level must be 0..9, got {level!r}")
    return dict(hdf5plugin.Blosc(cname="zstd", clevel=lvl, shuffle=hdf5plugin.Blosc.SHUFFLE))


def normalise_compression(compression: str | None, level: int | None) -> tuple[str, int | None]:
    """Validate and return ``(name, level)`` as recorded in the file's layout."""
    compression_options(compression, level)  # raises on bad input
    name = "none" if compression is None else str(compression).lower()
    if name == "zlib":
        name = "gzip"
    if name == "gzip" and level is None:
        level = DEFAULT_GZIP_LEVEL
    if name == "none":
        level = None
    return name, (None if level is None else int(level))


def check_schema(h5: h5py.File, path: str) -> int:
    """Return the file's schema version; raise :class:`SchemaError` if unreadable."""
    fmt = h5.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        raise SchemaError(f"{path}: not an nnpflow database (format attribute {fmt!r}, "
                          f"expected {FORMAT!r})")
    if "schema_version" not in h5.attrs:
        raise SchemaError(f"{path}: nnpflow database without a schema_version attribute")
    try:
        version = int(h5.attrs["schema_version"])
    except (TypeError, ValueError):
        raise SchemaError(f"{path}: schema_version attribute "
                          f"{h5.attrs['schema_version']!r} is not an integer") from None
    if version not in READABLE_VERSIONS:
        newer = version > max(READABLE_VERSIONS)
        raise SchemaError(
            f"{path}: database schema version {version} is "
            f"{'newer than' if newer else 'not one of'} the versions this nnpflow reads "
            f"({', '.join(map(str, sorted(READABLE_VERSIONS)))})"
            + ("; upgrade nnpflow or rebuild the database" if newer else ""))
    return version


def json_attr(h5: h5py.File | h5py.Group, name: str, default: Any = None) -> Any:
    """Decode a JSON string attribute (``default`` when absent)."""
    if name not in h5.attrs:
        return default
    value = h5.attrs[name]
    if isinstance(value, bytes):
        value = value.decode()
    return json.loads(value)
