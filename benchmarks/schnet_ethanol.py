"""SchNet accuracy on ethanol sampled by molecular dynamics with ASE's EMT calculator.

    python benchmarks/schnet_ethanol.py [--frames 1000] [--epochs 60] [--batch-size 8]
                                        [--out DIR] [--threads 1]

Generates ``--frames`` ethanol configurations by Langevin dynamics with
:class:`ase.calculators.emt.EMT` (300 K, 0.5 fs steps, one frame every 20
steps after 1,000 steps of equilibration; fixed seed; at 500 K EMT ethanol falls
apart within a few hundred steps, at 300 K it stays bound), writes them as an
Enerzyme pickle with a train.yaml (spec 004's SchNet stack without the charge
layers: RangeSeparation, GaussianSmearing, RandomAtomEmbedding, Core with 4
interactions and 128 channels, AtomicAffine, EnergyReduce, Force; 128
Gaussians, cutoff 5 Å; loss rmse E: 1, Fa: 52.917721; 70/10/20 split; 60
epochs; linear schedule) and trains it with ``nnpflow train``.  Prints the test
energy RMSE (total energy, eV) and force RMSE (eV/Å, over all components).

Enerzyme reaches 0.0112 eV and 0.0554 eV/Å on this task (issue 6).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import pickle  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ENERZYME = {"energy_rmse": 0.0112, "force_rmse": 0.0554}


def sample_ethanol(n_frames: int, seed: int = 7, every: int = 20, equilibrate: int = 1000,
                   temperature_K: float = 300.0) -> dict:
    """Langevin MD of ethanol with EMT: positions (F, 9, 3) Å, energies (F,) eV, forces eV/Å."""
    from ase import units
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution

    atoms = molecule("CH3CH2OH")
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    thermalize = getattr(velocitydistribution, "thermalize_momenta",  # ASE >= 3.28
                         velocitydistribution.MaxwellBoltzmannDistribution)
    thermalize(atoms, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature_K, friction=0.02, rng=rng,
                   fixcm=False)
    dyn.run(equilibrate)
    coords, energy, forces = [], [], []
    for _ in range(n_frames):
        dyn.run(every)
        coords.append(atoms.get_positions())
        energy.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return {"coordinates": np.array(coords), "atomic_numbers": atoms.numbers.copy(),
            "energy": np.array(energy), "forces": np.array(forces)}


def train_yaml(data_path: Path, epochs: int, batch_size: int) -> dict:
    return {
        "Datahub": {"data_path": str(data_path), "data_format": "pickle",
                    "features": {"Ra": "coordinates", "Za": "atomic_numbers"},
                    "targets": {"E": "energy", "Fa": "forces"},
                    "compression": True, "preload": True},
        "Modelhub": {"FF01": {
            "architecture": "SchNet", "active": True, "suffix": None,
            "build_params": {"dim_embedding": 128, "num_rbf": 128, "max_Za": 94, "cutoff_sr": 5.0},
            "layers": [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
                       {"name": "RandomAtomEmbedding"},
                       {"name": "Core", "params": {"num_interactions": 4, "hidden_channels": 128}},
                       {"name": "AtomicAffine"}, {"name": "EnergyReduce"}, {"name": "Force"}],
            "loss": {"rmse": {"E": 1, "Fa": 52.917721}}}},
        "Trainer": {"Splitter": {"method": "random", "parts": ["training", "validation", "test"],
                                 "ratios": [0.7, 0.1, 0.2], "seed": 42, "save": True,
                                 "preload": True},
                    "batch_size": batch_size, "cuda": False, "dtype": "float32",
                    "schedule": "linear", "learning_rate": 0.001, "max_epochs": epochs,
                    "num_workers": 0, "patience": epochs, "seed": 42, "warmup_ratio": 0.01},
        "Metrics": {"rmse": {"E": 1, "Fa": 52.917721}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args()

    from nnpflow.runtime import configure_threads
    from nnpflow.training.session import run_train

    configure_threads(args.threads)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="schnet_ethanol_"))
    out.mkdir(parents=True, exist_ok=True)
    data_path = out / "ethanol_emt.pkl"
    if not data_path.exists():
        t0 = time.perf_counter()
        data = sample_ethanol(args.frames)
        with open(data_path, "wb") as fh:
            pickle.dump(data, fh)
        pos = data["coordinates"]
        span = np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1).max()
        print(f"sampled {args.frames} ethanol frames with EMT in {time.perf_counter() - t0:.0f} s "
              f"(energy spread {data['energy'].std():.3f} eV, force RMS "
              f"{np.sqrt(np.mean(data['forces'] ** 2)):.3f} eV/Å, largest interatomic distance "
              f"{span:.2f} Å{'' if span < 5.0 else ': the molecule came apart'})")
    config = out / "train.yaml"
    config.write_text(yaml.safe_dump(train_yaml(data_path, args.epochs, args.batch_size),
                                     sort_keys=False))
    t0 = time.perf_counter()
    results = run_train(config, out / "run", force=True)
    elapsed = time.perf_counter() - t0
    metrics = results["FF01-SchNet"]
    print(f"SchNet on {args.frames} EMT ethanol frames (70/10/20, {args.epochs} epochs, batch "
          f"{args.batch_size}, {args.threads} thread(s)): trained in {elapsed / 60:.1f} min, "
          f"best epoch {metrics['best_epoch']}")
    print(f"  test energy RMSE {metrics['energy_rmse']:.4f} eV "
          f"({metrics['energy_rmse_per_atom'] * 1000:.2f} meV/atom), "
          f"force RMSE {metrics['force_rmse']:.4f} eV/Å, force MAE {metrics['force_mae']:.4f} eV/Å")
    print(f"  Enerzyme: energy RMSE {ENERZYME['energy_rmse']} eV, force RMSE "
          f"{ENERZYME['force_rmse']} eV/Å")
    print(f"  outputs in {out / 'run'}; test metrics: "
          f"{json.dumps({k: metrics[k] for k in ('energy_rmse', 'force_rmse', 'n_structures')})}")


if __name__ == "__main__":
    main()
