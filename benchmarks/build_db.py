"""Benchmark: build a database of 108-atom Cu/Au cells with features and derivatives.

Generates ``--n`` (default 1000) 3x3x3 fcc cells of 108 atoms with random Cu/Au
occupation and random displacements, labelled with ASE's EMT energies and
forces, and builds the database with 1 and 2 worker processes (descriptor:
species Cu, Au; rad_order 10, rad_cutoff 6.0 Å; ang_order 3, ang_cutoff 4.0 Å;
features and force derivatives persisted), ``--repeat`` times each, interleaved.
Prints structures/s per run and the medians, the speed-up of 2 workers over 1
and MB per structure on disk.

It also prints the machine's own ceiling for two processes: two independent
1-worker builds of half the cells each, started together (no merge); their
rate over the 1-worker rate is the most any 2-worker build can gain here
(shared caches, memory bandwidth and the hypervisor take the rest), and the
2-worker build's rate as a share of that ceiling.  Last, the disk use of the
workflow's layout (those two halves as shards plus the merged database) over
the data (the 1-worker database): with the index over the shards the
workflow's merge writes, and with a copying merge for contrast.

Targets (issue 4): >= 350 structures/s per core, >= 1.8x on 2 cores, <= 0.8 MB
per structure.  aenet-python on this kind of machine: 17.7 structures/s (one
worker), 6.55 MB per structure.

    OMP_NUM_THREADS=1 python benchmarks/build_db.py [--n 1000] [--workers 1 2] [--repeat 3]
        [--compression gzip] [--compression-level 1] [--dtype float32] [--out DIR]
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
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-ceiling", action="store_true",
                        help="skip the two-independent-processes measurement")
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
    options = dict(persist_features=True, persist_force_derivatives=True,
                   compression=None if args.compression == "none" else args.compression,
                   compression_level=args.compression_level, dtype=args.dtype)
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    ceiling: list[float] = []
    for _ in range(args.repeat):
        for workers in args.workers:
            path = out_dir / f"cuau_{workers}w.h5"
            t = time.perf_counter()
            result = build_sharded(sources, path, descriptor, n_workers=workers, **options)
            dt = time.perf_counter() - t
            info = database_info(path)
            rates[workers].append(args.n / dt)
            mb = info["file_bytes"] / 1e6 / args.n
            sizes = ", ".join(f"{g} {s['stored_bytes'] / 1e6 / args.n:.3f}"
                              for g, s in info["sizes"].items())
            print(f"workers={workers}: {result.n_structures} structures in {dt:.2f} s = "
                  f"{args.n / dt:.1f} structures/s ({args.n / dt / workers:.1f} per core); "
                  f"{mb:.3f} MB/structure on disk (MB/structure: {sizes})")
        if not args.no_ceiling:
            dt = two_independent_builds(structures, descriptor, out_dir, options)
            ceiling.append(args.n / dt)
            print(f"two independent 1-worker builds of {args.n // 2} cells each, together: "
                  f"{dt:.2f} s = {args.n / dt:.1f} structures/s")
    median = {w: float(np.median(r)) for w, r in rates.items()}
    for workers, rate in median.items():
        print(f"median workers={workers}: {rate:.1f} structures/s ({rate / workers:.1f} per core)")
    if 1 in median:
        for workers, rate in median.items():
            if workers > 1:
                print(f"speed-up {workers} workers vs 1 (medians): {rate / median[1]:.2f}x")
        if ceiling:
            top = float(np.median(ceiling))
            print(f"machine ceiling, two independent processes vs 1 worker (medians): "
                  f"{top / median[1]:.2f}x")
            if 2 in median:
                print(f"2-worker build / machine's two-process ceiling (medians): "
                      f"{median[2] / top:.1%}")
    if ceiling and 1 in args.workers:
        disk_use(out_dir)
    print(f"databases in {out_dir}")


def disk_use(out_dir: Path) -> None:
    """Bytes on disk of the workflow's layout -- the two half builds as its shards
    plus the merged database -- over the data (the 1-worker database): an index
    over the shards (what the workflow's merge writes) and, for contrast, a
    copying merge beside the shards."""
    from nnpflow.database import merge_databases

    data = (out_dir / "cuau_1w.h5").stat().st_size
    shards = [out_dir / "half_0.h5", out_dir / "half_1.h5"]
    shard_bytes = sum(p.stat().st_size for p in shards)
    index = merge_databases(shards, out_dir / "index.h5", link=True)
    copy = merge_databases(shards, out_dir / "copy.h5")
    print(f"disk use of the workflow's results (2 shards + merged database) over the data "
          f"({data / 1e6:.1f} MB): index over the shards "
          f"{(shard_bytes + index.stat().st_size) / data:.3f}x "
          f"(index file {index.stat().st_size / 1e3:.1f} kB); "
          f"a copying merge beside the shards {(shard_bytes + copy.stat().st_size) / data:.3f}x")


def _half_build(job) -> None:
    structures, descriptor, path, options = job
    from nnpflow.database.build import build_sharded
    from nnpflow.sources import RecordSourceCollection

    torch.set_num_threads(1)
    build_sharded(RecordSourceCollection(structures), path, descriptor, n_workers=1, **options)


def two_independent_builds(structures: list, descriptor, out_dir: Path, options: dict) -> float:
    """Seconds for two forked processes, each building half of ``structures``
    into its own database with one worker, started together."""
    import multiprocessing as mp

    half = len(structures) // 2
    ctx = mp.get_context("fork")
    jobs = [(structures[:half], descriptor, out_dir / "half_0.h5", options),
            (structures[half:], descriptor, out_dir / "half_1.h5", options)]
    t = time.perf_counter()
    procs = [ctx.Process(target=_half_build, args=(job,)) for job in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"half build failed with exit code {p.exitcode}")
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
