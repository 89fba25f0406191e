"""Benchmark: peak memory of SchNet training through the workflow's train stage,
against the size of the database.

For each ``--sizes`` entry (default 2,000 and 20,000) it writes a database of
that many raw 8-atom periodic Cu/Au cells (no features; as ``benchmarks/memory.py``
makes them), a split (10 % validation), and trains a small SchNet stack
(1 interaction, 16 channels, cutoff 4 Å; energies and forces) for ``--epochs``
epochs with ``nnpflow.stages.train.run`` in a fresh process, which prints its peak
resident set size.  Issue 14's target: the peak does not grow with the database
(message-passing models read the database lazily).  Each training runs in its own
process so the figures do not mix.

Figures (shared 2-core VM, 1 epoch): before ``LazyGraphs`` 352 MB (2,000) and 485 MB
(20,000); with it 351-352 MB (2,000), 355 MB (5,000), 363 MB (20,000), 368 MB
(40,000), with 239-247 MB before training: the pair-list cache holds 2,048
structures; a residual 10-15 MB (3 %) remains between 2,000 and 40,000 structures,
about what the reader's HDF5 chunk caches (bounded: 2 MB per dataset) can fill on a
9-18 MB file but not on a 0.9 MB one.

    OMP_NUM_THREADS=1 python benchmarks/schnet_memory.py [--sizes 2000 20000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

MODEL = {"architecture": "schnet",
         "build_params": {"dim_embedding": 16, "num_rbf": 16, "max_Za": 80, "cutoff_sr": 4.0},
         "layers": [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
                    {"name": "RandomAtomEmbedding"},
                    {"name": "Core", "params": {"num_interactions": 1, "hidden_channels": 16}},
                    {"name": "AtomicAffine"}, {"name": "EnergyReduce"}, {"name": "Force"}]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def prepare(folder: Path, n: int) -> tuple[Path, Path]:
    """Database of ``n`` raw cells and its split."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from memory import small_structures

    from nnpflow.database import DatabaseReader, write_database
    from nnpflow.splitting import make_split, write_split
    db, split = folder / f"cells_{n}.h5", folder / f"split_{n}.json"
    write_database(db, small_structures(n))
    with DatabaseReader(db) as reader:
        fingerprint = reader.structures_fingerprint
    write_split(split, make_split(n, 0.1, 0.0, 0, fingerprint))
    return db, split


def train(db: str, split: str, out: str, epochs: int) -> None:
    """One training in this process; prints a JSON line with the peak RSS."""
    import torch

    from nnpflow.runtime import keep_freed_memory
    from nnpflow.stages.train import run
    torch.set_num_threads(1)
    keep_freed_memory()
    before = peak_rss_mb()
    start = time.perf_counter()
    training = {"epochs": epochs, "batch_size": 32, "force_weight": 0.1, "patience": 0,
                "device": "cpu"}
    run(db, split, str(Path(out) / "model.pt"), str(Path(out) / "history.csv"), "schnet",
        MODEL, training)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "rss_before_training_mb": before,
                      "seconds": time.perf_counter() - start}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train", nargs=3, metavar=("DB", "SPLIT", "OUT"), default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train:
        train(*args.train, args.epochs)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            t0 = time.perf_counter()
            db, split = prepare(Path(tmp), n)
            made = time.perf_counter() - t0
            out = Path(tmp) / f"run_{n}"
            out.mkdir()
            done = subprocess.run([sys.executable, __file__, "--epochs", str(args.epochs),
                                   "--train", str(db), str(split), str(out)],
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{n:>7,} structures ({db.stat().st_size / 1e6:.1f} MB database, made in "
                  f"{made:.1f} s): peak RSS {result['peak_rss_mb']:.0f} MB "
                  f"({result['rss_before_training_mb']:.0f} MB before training), "
                  f"{args.epochs} epoch(s) in {result['seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
