"""Benchmark: peak memory of a streaming database build.

Streams ``--n`` (default 50,000) small periodic Cu/Au structures (8 atoms,
random occupation and displacements, synthetic energies and forces) through
``write_database`` with features and force derivatives persisted, and prints
the peak resident set size.  Structures are generated on the fly, so the peak
reflects the build alone; it must not grow with ``--n`` (target < 1 GB for
50,000).  Run with a small ``--n`` for a quick check, e.g.
``--n 2000``, and compare with the full run.

    OMP_NUM_THREADS=1 python benchmarks/memory.py [--n 50000] [--raw] [--out DB]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def small_structures(n: int, seed: int = 0):
    """Yield ``n`` 8-atom periodic Cu/Au cells (2x2x2 simple-cubic-like fcc cut)."""
    from nnpflow import Structure

    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                     [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])
    for i in range(n):
        a = rng.uniform(5.0, 5.6)
        pos = base * a + rng.normal(scale=0.1, size=base.shape)
        species = np.where(rng.random(8) < 0.5, "Cu", "Au").tolist()
        yield Structure(positions=pos, species=species, cell=np.eye(3) * a,
                        energy=float(rng.normal(-3.5, 0.1) * 8), forces=rng.normal(size=(8, 3)),
                        name=f"small/{i:06d}.xsf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--raw", action="store_true", help="raw structures only (no descriptor)")
    parser.add_argument("--out", default=None, help="database path (default: temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from nnpflow.database import database_info, write_database

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="nnpflow-mem-")) / "m.h5"
    descriptor = None
    if not args.raw:
        from nnpflow.descriptors import ChebyshevDescriptor
        descriptor = ChebyshevDescriptor(species=["Cu", "Au"], rad_order=10, rad_cutoff=6.0,
                                         ang_order=3, ang_cutoff=4.0)
    # warm up imports and allocator so the baseline is fair
    list(small_structures(2))
    if descriptor is not None:
        descriptor.featurize_batch_with_derivatives(list(small_structures(4)))
    base = peak_rss_mb()
    t = time.perf_counter()
    write_database(out, small_structures(args.n), descriptor=descriptor,
                   persist_features=not args.raw, persist_force_derivatives=not args.raw)
    dt = time.perf_counter() - t
    info = database_info(out)
    print(f"{info['n_structures']} structures ({'raw' if args.raw else 'features + derivatives'})"
          f" in {dt:.1f} s ({info['n_structures'] / dt:.0f} structures/s), "
          f"file {info['file_bytes'] / 1e6:.1f} MB")
    print(f"peak RSS {peak_rss_mb():.0f} MB (after imports and warm-up: {base:.0f} MB; "
          f"target < 1024 MB)")


if __name__ == "__main__":
    main()
