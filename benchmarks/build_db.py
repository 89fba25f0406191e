"""Benchmark: build a database of 108-atom Cu/Au cells with features and derivatives.

Generates ``--n`` (default 1000) 3x3x3 fcc cells of 108 atoms with random Cu/Au
occupation and random displacements, labelled with ASE's EMT energies and
forces, and builds the database with 1 and 2 worker processes (descriptor:
species Cu, Au; rad_order 10, rad_cutoff 6.0 Å; ang_order 3, ang_cutoff 4.0 Å;
features and force derivatives persisted).  Prints structures/s per run, the
speed-up of 2 workers over 1 and MB per structure on disk.

Targets (issue 4): >= 350 structures/s per core, >= 1.8x on 2 cores, <= 0.8 MB
per structure.  aenet-python on this kind of machine: 17.7 structures/s (one
worker), 6.55 MB per structure.

    OMP_NUM_THREADS=1 python benchmarks/build_db.py [--n 1000] [--workers 1 2]
        [--compression gzip] [--compression-level 4] [--dtype float32] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def cu_au_cells(n: int, seed: int = 0) -> list:
    """``n`` 108-atom fcc Cu/Au cells with EMT energies (eV) and forces (eV/Å)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from nnpflow import Structure

    rng = np.random.default_rng(seed)
    calc = EMT()
    out = []
    for i in range(n):
        a = rng.uniform(3.7, 4.0)
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((3, 3, 3))
        symbols = np.where(rng.random(len(atoms)) < rng.uniform(0.2, 0.8), "Au", "Cu")
        atoms.set_chemical_symbols(symbols.tolist())
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = calc
        e = atoms.get_potential_energy()
        f = atoms.get_forces()
        out.append(Structure(positions=atoms.positions, species=atoms.get_chemical_symbols(),
                             cell=np.array(atoms.cell), energy=e, forces=f,
                             name=f"cuau/cell_{i:05d}.xsf"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--compression", default="gzip")
    parser.add_argument("--compression-level", type=int, default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default=None, help="folder for the databases (default: temp)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from nnpflow.database import database_info
    from nnpflow.database.build import build_sharded
    from nnpflow.descriptors import ChebyshevDescriptor
    from nnpflow.sources import RecordSourceCollection

    t0 = time.perf_counter()
    structures = cu_au_cells(args.n)
    print(f"generated {args.n} 108-atom Cu/Au cells with EMT labels in "
          f"{time.perf_counter() - t0:.1f} s")
    descriptor = ChebyshevDescriptor(species=["Cu", "Au"], rad_order=10, rad_cutoff=6.0,
                                     ang_order=3, ang_cutoff=4.0)
    sources = RecordSourceCollection(structures)
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="nnpflow-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rates = {}
    for workers in args.workers:
        path = out_dir / f"cuau_{workers}w.h5"
        t = time.perf_counter()
        result = build_sharded(sources, path, descriptor, n_workers=workers,
                               persist_features=True, persist_force_derivatives=True,
                               compression=None if args.compression == "none" else args.compression,
                               compression_level=args.compression_level, dtype=args.dtype)
        dt = time.perf_counter() - t
        info = database_info(path)
        rates[workers] = args.n / dt
        mb = info["file_bytes"] / 1e6 / args.n
        sizes = ", ".join(f"{g} {s['stored_bytes'] / 1e6 / args.n:.3f}"
                          for g, s in info["sizes"].items())
        print(f"workers={workers}: {result.n_structures} structures in {dt:.2f} s = "
              f"{rates[workers]:.1f} structures/s ({rates[workers] / workers:.1f} per core); "
              f"{mb:.3f} MB/structure on disk (MB/structure: {sizes})")
    if 1 in rates:
        for workers, rate in rates.items():
            if workers > 1:
                print(f"speed-up {workers} workers vs 1: {rate / rates[1]:.2f}x")
    print(f"databases in {out_dir}")


if __name__ == "__main__":
    main()
