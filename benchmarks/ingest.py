"""Ingestion throughput (atoms/s, one core): XSF files, tar archives, TiO2 reference set.

    python benchmarks/ingest.py [--n-files 2000] [--repeat 3] [--shared-data DIR]

Generates random periodic XSF structures with forces (32 and 108 atoms) in a
temporary folder, then times, best of ``--repeat``:

* ``parse``: :func:`nnpflow.io.xsf.read_xsf` per file (read + parse);
* ``collection``: :class:`nnpflow.sources.FileListSourceCollection` iteration
  (read + parse + validate + label checks) -- what the ingest stage does;
* ``+ overlap check``: the same with ``StructureChecks(min_cutoff=0.5)``;
* the same members streamed from ``.tar``, ``.tar.gz``, ``.tar.bz2``, ``.tar.xz``
  (decompression included);
* ASE's own XSF reader on the plain files, for comparison;
* the 100 TiO2 files of ``../shared/data/xsf-TiO2`` when present.

The target in issue 2 is at least 100,000 atoms/s per core for XSF parsing.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import io  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from nnpflow import Structure  # noqa: E402
from nnpflow.io.xsf import format_xsf, read_xsf  # noqa: E402
from nnpflow.sources import FileListSourceCollection, TarArchiveXSFSourceCollection  # noqa: E402
from nnpflow.structure_checks import StructureChecks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def random_structure(rng: np.random.Generator, n: int) -> Structure:
    side = (n * 12.0) ** (1 / 3)
    grid = int(np.ceil(n ** (1 / 3)))
    sites = np.stack(np.meshgrid(*[np.arange(grid)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    positions = sites * (side / grid) + rng.normal(size=(n, 3)) * 0.05
    return Structure(positions=positions, species=list(rng.choice(["Ti", "O"], size=n)),
                     cell=np.eye(3) * side + rng.normal(size=(3, 3)) * 0.01,
                     energy=float(rng.normal() * 1e4), forces=rng.normal(size=(n, 3)))


def best_of(repeat: int, func) -> tuple[float, int]:
    """(best seconds, atoms) over ``repeat`` runs of ``func() -> atoms``."""
    best, atoms = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        atoms = func()
        best = min(best, time.perf_counter() - start)
    return best, atoms


def report(name: str, seconds: float, atoms: int, n_structures: int) -> None:
    print(f"  {name:<34s} {atoms / seconds:>12,.0f} atoms/s  {n_structures / seconds:>9,.0f} "
          f"structures/s  ({atoms} atoms in {seconds:.3f} s)")


def bench_files(files: list[Path], repeat: int, label: str, passes: int = 1) -> None:
    n = len(files) * passes
    print(f"{label}: {len(files)} files" + (f", {passes} passes" if passes > 1 else ""))
    t, a = best_of(repeat, lambda: sum(s.n_atoms for _ in range(passes) for f in files
                                       for s in read_xsf(f)))
    report("parse (read_xsf)", t, a, n)
    coll = FileListSourceCollection(files)
    t, a = best_of(repeat, lambda: sum(s.n_atoms for _ in range(passes)
                                       for s in coll.iter_structures()))
    report("collection (parse + validate)", t, a, n)
    checks = StructureChecks(min_cutoff=0.5)
    t, a = best_of(repeat, lambda: sum(s.n_atoms for _ in range(passes)
                                       for s in coll.iter_structures(check=checks)))
    report("collection + overlap check", t, a, n)


def bench_ase(files: list[Path], repeat: int) -> None:
    import ase.io

    t, a = best_of(repeat, lambda: sum(len(ase.io.read(f, format="xsf")) for f in files))
    report("ASE's XSF reader (comparison)", t, a, len(files))


def bench_archives(folder: Path, files: list[Path], repeat: int) -> None:
    members = [(f.name, f.read_bytes()) for f in files]
    for mode, suffix in (("w", ".tar"), ("w:gz", ".tar.gz"), ("w:bz2", ".tar.bz2"),
                         ("w:xz", ".tar.xz")):
        path = folder / f"archive{suffix}"
        with tarfile.open(path, mode) as tf:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        coll = TarArchiveXSFSourceCollection(path)
        t, a = best_of(repeat, lambda: sum(s.n_atoms for s in coll.iter_structures()))
        size = path.stat().st_size / 2**20
        report(f"{suffix} ({size:.1f} MiB)", t, a, len(members))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shared-data", type=Path,
                        default=Path(os.environ.get("NNPFLOW_SHARED_DATA",
                                                    REPO.parent / "shared" / "data")))
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}, one process")
    import timeit

    per_float = min(timeit.repeat("float('1.91782900')", number=200_000, repeat=5)) / 200_000
    print(f"CPU calibration: float('1.91782900') takes {per_float * 1e9:.0f} ns "
          "(XSF parsing is bound by it: 6 per atom with forces)")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="nnpflow-bench-") as tmp:
        tmp = Path(tmp)
        for n_atoms in (32, 108):
            folder = tmp / f"n{n_atoms}"
            folder.mkdir()
            count = args.n_files if n_atoms == 32 else max(1, args.n_files // 3)
            files = []
            for k in range(count):
                path = folder / f"s{k:05d}.xsf"
                path.write_text(format_xsf(random_structure(rng, n_atoms)))
                files.append(path)
            bench_files(files, args.repeat, f"XSF, {n_atoms} atoms with forces")
            if n_atoms == 32:
                bench_ase(files[: max(1, count // 4)], args.repeat)
                print(f"tar archives of the {count} files above (streamed, parse + validate)")
                bench_archives(tmp, files, args.repeat)
    tio2 = args.shared_data / "xsf-TiO2"
    if tio2.is_dir():
        files = sorted(tio2.glob("*.xsf"))
        bench_files(files, args.repeat, "TiO2 reference set", passes=10)
    else:
        print(f"TiO2 reference set: skipped ({tio2} not found)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
