"""Benchmark: ANN training speed from an HDF5 database with persisted features/derivatives.

Generates ``--n`` (default 512) 108-atom fcc Cu/Au cells with EMT energies and
forces (as ``benchmarks/build_db.py``), builds the database with persisted
features and force derivatives (descriptor Cu, Au; rad_order 10, rad_cutoff
6.0 Å; ang_order 3, ang_cutoff 4.0 Å), and trains 2x16 tanh networks per
species with batches of 32 structures on one thread:

* force training (force_weight 0.1, all forces), ``--force-epochs`` epochs;
* energy-only training from the persisted features, ``--energy-epochs`` epochs.

Prints structures/s per epoch (median and best of the epochs after the first)
and, with ``--breakdown``, where the time of a force step goes: loading the
batch from the database (``get_batch``: decoded blocks, derivative arrays, one
concatenated ``DescriptorDerivatives``), building the derivatives' geometric
cache (``precompute``), the networks with dE/dG (``create_graph``), the force
contraction, the backward pass and the optimiser.

Targets (issue 5): >= 450 structures/s per core with forces, >= 14,000
structures/s energy-only.  aenet-python on this kind of machine: 22.8 (forces),
3,550 (energy-only from HDF5).

Each of the two measurements runs in a fresh process (as each training job of the
workflow does); ``--only force|energy`` runs one in this process.

    OMP_NUM_THREADS=1 python benchmarks/train_ann.py [--n 512] [--db PATH]
        [--precision float32] [--device cpu] [--breakdown] [--only force|energy]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

ARCH = {"Cu": [(16, "tanh"), (16, "tanh")], "Au": [(16, "tanh"), (16, "tanh")]}


def descriptor(dtype=torch.float64):
    from nnpflow.descriptors import ChebyshevDescriptor
    return ChebyshevDescriptor(["Cu", "Au"], rad_order=10, rad_cutoff=6.0, ang_order=3,
                               ang_cutoff=4.0, dtype=dtype)


def build(path: Path, n: int) -> None:
    from build_db import cu_au_cells

    from nnpflow.datasets import HDF5StructureDataset
    t0 = time.perf_counter()
    cells = cu_au_cells(n)
    t1 = time.perf_counter()
    ds = HDF5StructureDataset(descriptor(), path, sources=cells, mode="build")
    ds.build_database(persist_features=True, persist_force_derivatives=True)
    ds.close()
    print(f"data: {n} cells of 108 atoms, EMT labels {t1 - t0:.1f} s, database "
          f"{time.perf_counter() - t1:.1f} s, {path.stat().st_size / n / 1e6:.2f} MB/structure")


def train_speed(db: Path, force_weight: float, epochs: int, precision: str, device: str,
                batch: int) -> list[float]:
    from nnpflow.datasets import HDF5StructureDataset
    from nnpflow.training.config import Adam, TorchTrainingConfig
    from nnpflow.training.potential import TorchANNPotential
    dtype = torch.float32 if precision == "float32" else torch.float64
    ds = HDF5StructureDataset(descriptor(dtype), db, mode="load")
    pot = TorchANNPotential(ARCH, ds.descriptor)
    cfg = TorchTrainingConfig(iterations=epochs, method=Adam(mu=1e-3, batchsize=batch),
                              force_weight=force_weight, testpercent=0, device=device,
                              precision=precision)
    history = pot.train(dataset=ds, config=cfg)
    ds.close()
    return [len(ds) / row["time_s"] for row in history]


def breakdown(db: Path, precision: str, batch: int, steps: int) -> None:
    """Time the parts of a force-training step on random batches."""
    from nnpflow.datasets import HDF5StructureDataset
    from nnpflow.training.ann_loss import rmse_loss
    from nnpflow.training.potential import TorchANNPotential
    dtype = torch.float32 if precision == "float32" else torch.float64
    ds = HDF5StructureDataset(descriptor(dtype), db, mode="load")
    pot = TorchANNPotential(ARCH, ds.descriptor)
    net = pot.net.to(dtype)
    params = list(net.parameters())
    opt = torch.optim.Adam(params, fused=True)
    ds.get_batch(range(min(len(ds), 256)))  # fill the block caches
    rng = np.random.default_rng(0)
    parts = {k: [] for k in ("load (get_batch)", "derivative cache (precompute)",
                             "networks + dE/dG", "force contraction", "backward",
                             "optimiser")}
    for it in range(steps):
        idx = np.sort(rng.choice(len(ds), size=batch, replace=False))
        t = [time.perf_counter()]
        b = ds.get_batch(idx)
        t.append(time.perf_counter())
        b.derivatives.precompute()
        t.append(time.perf_counter())
        g = b.features.detach().requires_grad_(True)
        eps = net(g, b.species_index)
        e = eps.new_zeros(b.n_structures).index_add(0, b.atom_structure, eps) / b.n_atoms
        (grad,) = torch.autograd.grad(eps.sum(), g, create_graph=True)
        t.append(time.perf_counter())
        f = b.derivatives.forces(grad.index_select(0, b.force_atom_index))
        t.append(time.perf_counter())
        de = e - (b.energy.to(e.dtype) / b.n_atoms)
        df = f - b.forces.index_select(0, b.force_atom_index)
        loss = rmse_loss((de * de).sum(), float(de.numel()), (df * df).sum(), float(df.numel()),
                         0.1)
        opt.zero_grad()
        loss.backward(inputs=params)
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        if it >= 2:
            for k, (a, c) in zip(parts, zip(t[:-1], t[1:])):
                parts[k].append((c - a) * 1e3)
    total = sum(np.median(v) for v in parts.values())
    print(f"force step breakdown ({batch} structures, {precision}, median of {steps - 2} steps):")
    for k, v in parts.items():
        print(f"  {k:32s} {np.median(v):7.1f} ms  ({100 * np.median(v) / total:4.1f} %)")
    print(f"  {'total':32s} {total:7.1f} ms  -> {batch / total * 1e3:.0f} structures/s")
    ds.close()


def report(name: str, rates: list[float], target: float) -> None:
    after = rates[1:] or rates
    print(f"{name}: median {np.median(after):,.0f} structures/s, best {max(after):,.0f} "
          f"(target {target:,.0f}; epochs: {', '.join(f'{r:,.0f}' for r in rates)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--db", type=Path, default=None,
                        help="database path (built when missing; default: a temporary file)")
    parser.add_argument("--force-epochs", type=int, default=4)
    parser.add_argument("--energy-epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--only", choices=("force", "energy"), default=None,
                        help="run one measurement in this process (default: each in its own)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from nnpflow.runtime import keep_freed_memory
    keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "cuau.h5"
        if not db.exists():
            build(db, args.n)
        if args.only is None:
            print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device "
                  f"{args.device}, precision {args.precision}, batch {args.batch}")
            # each measurement in a fresh process, as each training job of the workflow
            # runs: the force run's allocations would otherwise shape the energy run's heap
            if args.breakdown:
                breakdown(db, args.precision, args.batch, 12)
            for mode in ("force", "energy"):
                cmd = [sys.executable, __file__, "--db", str(db), "--only", mode]
                for flag in ("n", "force_epochs", "energy_epochs", "batch", "precision",
                             "device", "threads"):
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                subprocess.run(cmd, check=True)
        elif args.only == "force":
            report("force training", train_speed(db, 0.1, args.force_epochs, args.precision,
                                                 args.device, args.batch), 450)
        else:
            report("energy-only", train_speed(db, 0.0, args.energy_epochs, args.precision,
                                              args.device, args.batch), 14000)


if __name__ == "__main__":
    main()
