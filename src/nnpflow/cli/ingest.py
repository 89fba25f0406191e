"""``nnpflow ingest``: read, check and list structures; write a manifest.

::

    nnpflow ingest data/ more/*.xsf archive.tar.bz2 -o manifest.tsv \\
        [--format F] [--species Ti,O] [--on-error raise|skip] [--min-cutoff 0.5] \\
        [--max-energy 0.2 --atomic-energies refs.csv] [--no-require-energy]

Each PATH is a file, a directory (searched for known structure files), a glob
(quote it) or a tar archive.  Writes the manifest (TSV) to ``-o``, the rejected
list next to it (``<name>.rejected.tsv``) and prints the summary (JSON) to
stdout.  Structures whose energy is a wild outlier (column ``energy_robust_z``)
are listed in a warning on stderr; they are kept (``--max-energy`` filters).  Bad input exits with status 2 and one line on stderr naming the file,
member and line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..energy_reference import EnergyFilter, read_atomic_energy_csv
from ..errors import ConfigError
from ..safe_write import strict_json
from ..structure import element_symbol


def rejected_path(manifest: str | Path) -> Path:
    """``x/manifest.tsv`` -> ``x/manifest.rejected.tsv``."""
    p = Path(manifest)
    stem = p.name[:-4] if p.name.endswith(".tsv") else p.name
    return p.with_name(f"{stem}.rejected.tsv")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ingest", help="read and check structure files; write a manifest",
        description=__doc__.split("::")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="structure file, directory, glob or tar archive")
    p.add_argument("-o", "--output", required=True, metavar="TSV",
                   help="manifest to write (the rejected list goes next to it)")
    p.add_argument("--format", default=None,
                   help="reader for all PATHs: xsf, tar, pickle, npz, ase or an ASE format "
                        "name (default: by file name)")
    p.add_argument("--species", action="append", default=None, metavar="LIST",
                   help="allowed species, comma-separated or repeated (--species Ti,O or "
                        "--species Ti --species O); structures with others are bad input")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="raise: stop at the first bad input (default); skip: list it and go on")
    p.add_argument("--min-cutoff", type=float, default=None, metavar="ANGSTROM",
                   help="reject structures with two atoms this close or closer")
    p.add_argument("--max-energy", type=float, default=None, metavar="EV_PER_ATOM",
                   help="drop structures whose referenced energy per atom is higher")
    p.add_argument("--atomic-energies", default=None, metavar="CSV",
                   help="atomic reference energies (CSV atom_type,atomic_energy; eV) "
                        "for --max-energy")
    p.add_argument("--require-energy", action=argparse.BooleanOptionalAction, default=True,
                   help="structures without a total energy are bad input (default: yes)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..io.manifest import read_manifest, read_rejected, summarize
    from ..sources import expand_sources
    from ..stages import ingest

    if args.atomic_energies and args.max_energy is None:
        raise ConfigError("--atomic-energies is only used with --max-energy")
    refs = read_atomic_energy_csv(args.atomic_energies) if args.atomic_energies else None
    species = None
    if args.species is not None:
        species = [element_symbol(s) for item in args.species
                   for s in item.replace(",", " ").split()]
    entries = [{"path": p, "format": args.format} for p in args.paths]
    specs = expand_sources(entries, base_dir=".")
    rejected = rejected_path(args.output)
    ingest.run([s.to_dict() for s in specs], shard=0, n_shards=1, manifest=args.output,
               rejected=str(rejected), species=species, atomic_energies=refs,
               max_energy=args.max_energy, min_cutoff=args.min_cutoff,
               on_error=args.on_error, require_energy=args.require_energy)
    rows = read_manifest(args.output)
    n_rejected = len(read_rejected(rejected))
    filter_meta = EnergyFilter(args.max_energy, refs).config()
    info = summarize(rows, n_rejected=n_rejected, filter_meta=filter_meta)
    from ..energy_outliers import COLUMN
    from ..io.manifest import write_manifest
    from ..stages.manifest import flag_energy_outliers
    info["energy_outliers"] = flag_energy_outliers(rows, refs, max_warnings=0)
    write_manifest(args.output, rows, optional=(COLUMN,))
    info["manifest"] = str(args.output)
    info["rejected"] = str(rejected)
    sys.stdout.write(strict_json(info))
    sys.stdout.write("\n")
    if n_rejected:
        print(f"nnpflow ingest: {n_rejected} rejected (see {rejected})", file=sys.stderr)
    found = info["energy_outliers"]
    if found["n"]:
        shown = ", ".join(found["labels"][:5]) + (", ..." if found["n"] > 5 else "")
        print(f"nnpflow ingest: warning: {found['n']} structures with an outlying energy "
              f"(|robust z| > {found['robust_z_threshold']:g}, column {COLUMN} of "
              f"{args.output}): {shown}", file=sys.stderr)
    return 0
