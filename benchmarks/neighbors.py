"""Speed of the overlap check (``nnpflow.structure_checks.closest_pair``, run on every
structure at ingest) and, where present, of the neighbour-list entry point
``nnpflow.neighbors.neighbor_list`` per backend.

    python benchmarks/neighbors.py                 # TiO2 reference set + Cu/Au cells
    PYTHONPATH=/other/checkout/src python benchmarks/neighbors.py   # compare checkouts

Prints microseconds per structure (median of --repeats passes over all structures)
for: the TiO2 reference structures (``$NNPFLOW_SHARED_DATA/xsf-TiO2`` or
``../shared/data/xsf-TiO2``; skipped when absent) with ingest's min_cutoff 0.55 Å
(the minimum-image path), Cu/Au fcc cells (108 atoms, rattled, 20 % moved outside
the home cell) at 0.55 Å and at 6.0 Å (the images path), and 500-atom cells (ASE's
cell lists).  Compare checkouts by interleaving runs and taking medians: single
timings on a shared machine drift by tens of percent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np


def cu_au_cells(n: int, repeat: int, seed: int = 0):
    from ase.build import bulk

    from nnpflow import Structure
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(repeat)
        atoms.symbols[rng.permutation(len(atoms))[: len(atoms) // 2]] = "Au"
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))),
                       scale_atoms=True)
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        pos = atoms.positions
        moved = rng.random(len(atoms)) < 0.2
        pos[moved] += rng.integers(-2, 3, (moved.sum(), 3)) @ atoms.cell[:]
        out.append(Structure(positions=pos, species=list(atoms.symbols), cell=atoms.cell[:]))
    return out


def tio2():
    from nnpflow.io import read_structures
    for base in (os.environ.get("NNPFLOW_SHARED_DATA"),
                 Path(__file__).resolve().parents[1] / ".." / "shared" / "data"):
        if base and (Path(base) / "xsf-TiO2").is_dir():
            files = sorted((Path(base) / "xsf-TiO2").glob("*.xsf"))
            return [s for f in files for s in read_structures(f)]
    return []


def per_structure_us(func, structures, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for s in structures:
            func(s)
        times.append((time.perf_counter() - start) / len(structures) * 1e6)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    import nnpflow
    from nnpflow.structure_checks import closest_pair
    print(f"nnpflow from {Path(nnpflow.__file__).parent}")
    sets = {"TiO2 (0.55 Å)": (tio2(), 0.55),
            "Cu/Au 108 atoms (0.55 Å)": (cu_au_cells(20, 3), 0.55),
            "Cu/Au 108 atoms (6.0 Å)": (cu_au_cells(5, 3), 6.0),
            "Cu/Au 500 atoms (2.0 Å)": (cu_au_cells(3, 5), 2.0)}
    try:
        from nnpflow.neighbors import neighbor_list
    except ImportError:
        neighbor_list = None
    for name, (structures, cutoff) in sets.items():
        if not structures:
            print(f"{name}: no data, skipped")
            continue
        us = per_structure_us(lambda s: closest_pair(s, cutoff), structures, args.repeats)
        line = f"{name:28s} closest_pair {us:10.1f} us/structure"
        if neighbor_list is not None:
            for backend in ("numpy", "torch"):
                t = per_structure_us(lambda s: neighbor_list(
                    s.positions, s.cell, s.pbc, cutoff, backend=backend), structures, args.repeats)
                line += f"   neighbor_list[{backend}] {t:10.1f} us"
        print(line, flush=True)


if __name__ == "__main__":
    main()
