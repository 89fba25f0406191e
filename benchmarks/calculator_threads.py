"""Molecular-dynamics steps with ``NNPCalculator``: one torch thread (the default,
``threads=1``) against torch's own default (one thread per core).

    python benchmarks/calculator_threads.py                    # 56-atom Cu/Au cell
    python benchmarks/calculator_threads.py --busy 2           # with 2 spinning processes

An ANN potential (descriptor of the workflow's Cu/Au defaults: rad_order 10,
rad_cutoff 6.0 Å, ang_order 3, ang_cutoff 4.0 Å; two hidden layers of 16 tanh
nodes; weights from aenet's initialisation, untrained: the cost of a step does not
depend on the weights) drives velocity-Verlet steps (1 fs, energies and forces
each step) of a rattled 56-atom Cu/Au cell (:func:`cell`).  The two settings are
timed in interleaved rounds (``--rounds``); the medians of ms per step are printed
with their ratio.
``--busy N`` starts N processes that spin on the CPU for the whole run, as other
jobs do on a shared node.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="MD steps per round (default 20)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--busy", type=int, default=0, help="spinning processes (default 0)")
    p.add_argument("--many", type=int, default=None,
                   help="threads of the comparison setting (default: torch's default, "
                        "os.cpu_count())")
    return p.parse_args(argv)


def spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2147483648


def cell():
    """56 atoms: 2x2x2 conventional fcc cells (64 atoms, a = 3.7 Å) less every 8th
    atom, half Cu and half Au at random, rattled by 0.05 Å."""
    import numpy as np
    from ase.build import bulk
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 2))
    del atoms[[i for i in range(len(atoms)) if i % 8 == 7]]       # 64 -> 56 atoms
    rng = np.random.default_rng(0)
    atoms.set_chemical_symbols(np.where(rng.random(len(atoms)) < 0.5, "Au", "Cu").tolist())
    atoms.rattle(0.05, seed=1)
    return atoms


def main() -> None:
    args = parse_args()
    import numpy as np
    import torch
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from nnpflow.calculator import NNPCalculator
    from nnpflow.descriptors import ChebyshevDescriptor
    from nnpflow.training.potential import TorchANNPotential

    many = args.many or os.cpu_count() or 1
    folder = tempfile.mkdtemp(prefix="nnpflow-calculator-threads-")
    path = os.path.join(folder, "model.pt")
    descriptor = ChebyshevDescriptor(["Cu", "Au"], rad_order=10, rad_cutoff=6.0, ang_order=3,
                                     ang_cutoff=4.0, min_cutoff=0.55)
    pot = TorchANNPotential({"Cu": [(16, "tanh"), (16, "tanh")],
                             "Au": [(16, "tanh"), (16, "tanh")]}, descriptor)
    pot.net.init_weights(torch.Generator().manual_seed(0))
    pot.save(path)

    stop = mp.Event()
    spinners = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for s in spinners:
        s.start()
    times: dict[int, list[float]] = {1: [], many: []}
    try:
        for _ in range(args.rounds):
            for threads in (1, many):
                atoms = cell()
                MaxwellBoltzmannDistribution(atoms, temperature_K=300,
                                             rng=np.random.default_rng(2))
                atoms.calc = NNPCalculator(path, threads=threads)
                md = VelocityVerlet(atoms, timestep=1.0 * units.fs)
                md.run(1)  # warm-up (first call builds caches)
                t0 = time.perf_counter()
                md.run(args.steps)
                times[threads].append((time.perf_counter() - t0) / args.steps * 1e3)
    finally:
        stop.set()
        for s in spinners:
            s.join()
        shutil.rmtree(folder, ignore_errors=True)
    one, other = statistics.median(times[1]), statistics.median(times[many])
    print(f"56-atom Cu/Au cell, {args.steps} MD steps x {args.rounds} interleaved rounds, "
          f"{args.busy} spinning process(es), {os.cpu_count()} CPU(s)")
    print(f"threads=1 (default): median {one:.1f} ms/step  (rounds: "
          + ", ".join(f"{t:.1f}" for t in times[1]) + ")")
    print(f"threads={many} (torch default): median {other:.1f} ms/step  (rounds: "
          + ", ".join(f"{t:.1f}" for t in times[many]) + ")")
    print(f"ratio {other / one:.2f}")


if __name__ == "__main__":
    main()
