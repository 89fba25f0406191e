"""``nnpflow db``: build, merge and inspect training databases.

::

    nnpflow db build data/ archive.tar.bz2 -o train.h5 --species Cu Au \\
        [--rad-order 10 --rad-cutoff 6.0 --ang-order 3 --ang-cutoff 4.0 --min-cutoff 0.55 |
         --descriptor-json desc.json] [--workers 2] [--shards N] \\
        [--persist-features/--no-persist-features] \\
        [--persist-derivatives/--no-persist-derivatives] [--raw] \\
        [--compression gzip|lzf|zstd|blosc|none] [--compression-level L] [--dtype float32] \\
        [--max-energy 0.2 --atomic-energies refs.csv] [--on-error raise|skip] [--format F]
    nnpflow db info train.h5 [--json] [--check]
    nnpflow db merge shard_0.h5 shard_1.h5 -o train.h5

``build`` streams the sources into a database (atomically), featurised with the
Chebyshev descriptor, in ``--workers`` processes (structures assigned to shards
by their source label, shards merged at the end) and prints a JSON summary.
Bad input -- unreadable sources, species outside ``--species``, two atoms at or
below ``--min-cutoff`` -- exits with status 2 and one line naming the file
(member, line), writing nothing; ``--on-error skip`` lists it in the summary
instead.
``info`` prints counts, species, descriptor, sizes and fingerprints; the file's
structure is checked on open (offsets, counts, required arrays), and ``--check``
also reads every array (atomic numbers, finite positions, features and
derivatives).  A corrupt database exits with status 2 and one line naming the
file and the inconsistency.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..safe_write import strict_json


def register(subparsers) -> None:
    p = subparsers.add_parser("db", help="build, merge and inspect training databases",
                              description=__doc__.split("::")[0].strip(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="db_command", metavar="SUBCOMMAND")

    b = sub.add_parser("build", help="build a database from structure sources")
    b.add_argument("paths", nargs="+", metavar="PATH",
                   help="structure file, directory, glob or tar archive")
    b.add_argument("-o", "--output", required=True, metavar="H5", help="database to write")
    b.add_argument("--format", default=None,
                   help="reader for all PATHs (default: by file name)")
    b.add_argument("--species", nargs="+", default=None, metavar="SYMBOL",
                   help="descriptor species, in order (required unless --descriptor-json "
                        "or --raw)")
    b.add_argument("--rad-order", type=int, default=10)
    b.add_argument("--rad-cutoff", type=float, default=6.0, metavar="ANGSTROM")
    b.add_argument("--ang-order", type=int, default=3)
    b.add_argument("--ang-cutoff", type=float, default=4.0, metavar="ANGSTROM")
    b.add_argument("--min-cutoff", type=float, default=0.55, metavar="ANGSTROM")
    b.add_argument("--descriptor-json", default=None, metavar="FILE_OR_JSON",
                   help="descriptor config (a file or inline JSON, e.g. a database's "
                        "descriptor); replaces the descriptor flags")
    b.add_argument("--raw", action="store_true",
                   help="store raw structures only (no descriptor, features or derivatives)")
    b.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    b.add_argument("--shards", type=int, default=None,
                   help="shards (default: --workers); decides the database order")
    b.add_argument("--persist-features", action=argparse.BooleanOptionalAction, default=True,
                   help="store the features of every atom (default: yes)")
    b.add_argument("--persist-derivatives", action=argparse.BooleanOptionalAction,
                   default=True,
                   help="store descriptor derivatives of structures with forces (default: yes)")
    b.add_argument("--compression", default="gzip",
                   choices=("gzip", "zlib", "lzf", "zstd", "blosc", "none"))
    b.add_argument("--compression-level", type=int, default=None)
    b.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="dtype of stored features and derivatives")
    b.add_argument("--max-energy", type=float, default=None, metavar="EV_PER_ATOM",
                   help="drop structures whose referenced energy per atom is higher")
    b.add_argument("--atomic-energies", default=None, metavar="CSV",
                   help="atomic reference energies (CSV atom_type,atomic_energy; eV)")
    b.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    b.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    b.set_defaults(func=build_main)

    i = sub.add_parser("info", help="summary of a database")
    i.add_argument("database", metavar="H5")
    i.add_argument("--json", action="store_true", help="print the full summary as JSON")
    i.add_argument("--check", action="store_true",
                   help="also read every array and check the data (atomic numbers, finite "
                        "positions, features and derivatives)")
    i.set_defaults(func=info_main)

    m = sub.add_parser("merge", help="merge shard databases (in the order given)")
    m.add_argument("shards", nargs="+", metavar="H5")
    m.add_argument("-o", "--output", required=True, metavar="H5")
    m.add_argument("--link", action="store_true",
                   help="write an index over the shards (HDF5 external links, nothing "
                        "copied; keep the shards beside it) instead of a self-contained copy")
    m.set_defaults(func=merge_main)

    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _descriptor(args: argparse.Namespace):
    if args.raw:
        given = [f for f in ("species", "descriptor_json") if getattr(args, f)]
        if given:
            raise ConfigError(f"--raw stores no descriptor; drop --{given[0].replace('_', '-')}")
        return None
    from ..descriptors import ChebyshevDescriptor
    if args.descriptor_json:
        text = args.descriptor_json
        path = Path(text)
        if path.is_file():
            text = path.read_text(encoding="utf-8")
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--descriptor-json: not JSON ({exc})") from None
        if args.species and list(cfg.get("species", [])) != list(args.species):
            raise ConfigError(f"--species {args.species} differs from the descriptor JSON's "
                              f"species {cfg.get('species')}")
        return ChebyshevDescriptor.from_config(cfg)
    if not args.species:
        raise ConfigError("db build needs --species (or --descriptor-json, or --raw)")
    return ChebyshevDescriptor(species=list(args.species), rad_order=args.rad_order,
                               rad_cutoff=args.rad_cutoff, ang_order=args.ang_order,
                               ang_cutoff=args.ang_cutoff, min_cutoff=args.min_cutoff)


def build_main(args: argparse.Namespace) -> int:
    from ..database.build import build_sharded
    from ..energy_reference import read_atomic_energy_csv
    from ..runtime import configure_threads, keep_freed_memory
    from ..sources import collection_for, expand_sources

    descriptor = _descriptor(args)
    if args.atomic_energies and args.max_energy is None:
        raise ConfigError("--atomic-energies is only used with --max-energy")
    refs = read_atomic_energy_csv(args.atomic_energies) if args.atomic_energies else None
    specs = expand_sources([{"path": p, "format": args.format} for p in args.paths],
                           base_dir=".")
    collection = collection_for(specs)
    configure_threads(1)
    keep_freed_memory()
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    compression = None if args.compression == "none" else args.compression
    result = build_sharded(
        collection, args.output, descriptor, n_workers=args.workers, n_shards=args.shards,
        persist_features=bool(descriptor is not None and args.persist_features),
        persist_force_derivatives=bool(descriptor is not None and args.persist_derivatives),
        compression=compression, compression_level=args.compression_level, dtype=args.dtype,
        max_energy=args.max_energy, atomic_energies=refs, on_error=args.on_error,
        check_overlaps=descriptor is not None, show_progress=progress)
    from ..database import database_info
    info = database_info(args.output)
    summary = {
        "database": str(args.output),
        "n_structures": info["n_structures"],
        "n_atoms": info["n_atoms"],
        "species": info["species"],
        "seconds": round(result.seconds, 3),
        "structures_per_second": (round(result.n_structures / result.seconds, 2)
                                  if result.seconds > 0 else None),
        "file_bytes": info["file_bytes"],
        "fingerprint": info["fingerprint"],
        "structures_fingerprint": info["structures_fingerprint"],
        "rejected": [{"label": r.label, "reason": r.reason} for r in result.rejected],
        "filtered": [{"label": r.label, "reason": r.reason} for r in result.filtered],
    }
    print(strict_json(summary, sort_keys=False))
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def info_main(args: argparse.Namespace) -> int:
    from ..database import database_info
    info = database_info(args.database, check=args.check)
    if args.json:
        print(strict_json(info))
        return 0
    layout = info["layout"]
    stats = info["statistics"]
    lines = [
        f"database        {info['path']}",
        f"schema version  {info['schema_version']}",
        f"structures      {info['n_structures']} ({stats['n_with_energy']} with energy, "
        f"{stats['n_with_forces']} with forces)",
        f"atoms           {info['n_atoms']}",
        "species         " + ", ".join(f"{s} ({c})" for s, c in
                                       stats["species_counts"].items()),
        "descriptor      " + (strict_json(info["descriptor"], indent=None)
                                if info["descriptor"] else "none"),
        f"persisted       features={layout['features']} "
        f"force_derivatives={layout['force_derivatives']} dtype={layout['dtype']}",
        f"compression     {layout['compression']}"
        + (f" (level {layout['compression_level']})"
           if layout.get("compression_level") is not None else ""),
        f"file size       {_mb(info['file_bytes'])}"
        + (f", with its {len(info['linked_files'])} linked shard file(s) "
           f"{_mb(info['data_bytes'])}" if info.get("linked_files") else "")
        + (f" ({_mb(info['bytes_per_structure'])} per structure)"
           if info["bytes_per_structure"] else ""),
    ]
    for group, size in info["sizes"].items():
        lines.append(f"  {group:<14}{_mb(size['stored_bytes'])} stored, "
                     f"{_mb(size['uncompressed_bytes'])} uncompressed")
    e = stats["energy_per_atom"]
    if e["count"]:
        lines.append(f"energy/atom     mean {e['mean']:.6g} eV, std {e['std']:.6g} eV, "
                     f"range [{e['min']:.6g}, {e['max']:.6g}] eV")
    lines += [f"fingerprint     {info['fingerprint']}",
              f"structures fp   {info['structures_fingerprint']}"]
    filt = info["filter"] or {}
    if filt.get("max_energy") is not None:
        lines.append(f"filter          max_energy {filt['max_energy']} eV/atom, "
                     f"atomic_energies {filt.get('atomic_energies')}")
    if "check" in info:
        c = info["check"]
        lines.append(f"check           ok: read every array ({c['structures']} structures, "
                     f"{c['atoms']} atoms, {c['derivative_rows']} derivative rows)")
    print("\n".join(lines))
    return 0


def merge_main(args: argparse.Namespace) -> int:
    from ..database import database_info, merge_databases
    merge_databases(args.shards, args.output, link=args.link)
    info = database_info(args.output)
    print(strict_json({"database": args.output, "n_structures": info["n_structures"],
                       "fingerprint": info["fingerprint"]}, sort_keys=False))
    return 0
