"""Benchmark: accuracy of an ANN potential on aenet's TiO2 example data.

Data: the 100 DFT TiO2 structures of ``../shared/data/xsf-TiO2`` (read in
place; ``--data`` or ``$NNPFLOW_SHARED_DATA`` to point elsewhere).  Settings of
aenet's examples (the data's README): species Ti, O; rad_order 10, rad_cutoff
6.0 Å; ang_order 3, ang_cutoff 3.5 Å; min_cutoff 0.5 Å; two hidden layers of 10
tanh nodes per species; atomic energies O -432.503149303 eV, Ti
-1604.604515075 eV.  A fixed 80/20 split (seeded, ``--split-seed``), force
weight 0.1, Adam with a cosine learning-rate decay; the 20 % test part is only
evaluated at the end (training monitors no validation set).

Prints the test (and training) energy RMSE and MAE per atom (meV/atom) and the
force RMSE and MAE (eV/Å, over all components), per species too, the largest
test errors and the test energy RMSE over the test structures whose referenced
energy lies inside the training range (one test structure, at -3.15 eV/atom,
is 1.9 eV/atom above every training structure: an extrapolation).  With 80
training structures longer training overfits (1500 epochs: train 3.4, test
inside-range 93 meV/atom; 300 epochs: 5.7 and 40).

    OMP_NUM_THREADS=1 python benchmarks/tio2_accuracy.py [--epochs 300] [--batch 8]
        [--lr 0.005] [--weight-decay 0] [--ema 0] [--seed 1] [--split-seed 0] [--save model.pt]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ATOMIC_ENERGIES = {"O": -432.503149303, "Ti": -1604.604515075}
ARCH = {"Ti": [(10, "tanh"), (10, "tanh")], "O": [(10, "tanh"), (10, "tanh")]}


def data_folder(given: str | None) -> Path:
    if given:
        return Path(given)
    env = os.environ.get("NNPFLOW_SHARED_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base / "xsf-TiO2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="folder of the TiO2 XSF files")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--force-weight", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--precision", choices=("float32", "float64"), default="float64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", default=None, help="write the trained model here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from nnpflow.datasets import StructureDataset, train_test_split
    from nnpflow.descriptors import ChebyshevDescriptor
    from nnpflow.training.config import Adam, TorchTrainingConfig
    from nnpflow.training.potential import TorchANNPotential

    folder = data_folder(args.data)
    files = sorted(folder.glob("*.xsf"))
    if not files:
        raise SystemExit(f"no XSF files in {folder} (set --data or NNPFLOW_SHARED_DATA)")
    dtype = torch.float64 if args.precision == "float64" else torch.float32
    descriptor = ChebyshevDescriptor(["Ti", "O"], rad_order=10, rad_cutoff=6.0, ang_order=3,
                                     ang_cutoff=3.5, min_cutoff=0.5, dtype=dtype)
    dataset = StructureDataset(files, descriptor, atomic_energies=ATOMIC_ENERGIES, dtype=dtype)
    train, test = train_test_split(dataset, 0.2, seed=args.split_seed)
    config = TorchTrainingConfig(
        iterations=args.epochs,
        method=Adam(mu=args.lr, batchsize=args.batch, weight_decay=args.weight_decay),
        force_weight=args.force_weight, testpercent=0, seed=args.seed, schedule="cosine",
        schedule_params={"min_lr_ratio": 0.02}, cache_features=True, cache_force_triplets=True,
        ema_decay=args.ema, device="cpu", precision=args.precision)
    pot = TorchANNPotential(ARCH, descriptor)
    t0 = time.perf_counter()
    history = pot.train(train_dataset=train, config=config)
    elapsed = time.perf_counter() - t0
    if args.save:
        pot.save(args.save)
    print(f"TiO2: {len(dataset)} structures ({len(train)} train / {len(test)} test, split seed "
          f"{args.split_seed}), {descriptor.n_features} features, {pot.net.n_parameters()} "
          f"weights; {len(history)} epochs in {elapsed:.0f} s ({torch.get_num_threads()} thread)")
    import numpy as np

    from nnpflow.training.potential import prediction_metrics
    train_e = dataset.referenced_energies_per_atom()[train.indices]
    for name, part in (("train", train), ("test", test)):
        result = pot.predict_dataset(part)
        m = prediction_metrics(result)
        print(f"{name:5s}: energy RMSE {1000 * m['energy_rmse_per_atom']:.2f} meV/atom "
              f"(MAE {1000 * m['energy_mae_per_atom']:.2f}); force RMSE {m['force_rmse']:.4f} "
              f"eV/Å (MAE {m['force_mae']:.4f}); per species force RMSE "
              + ", ".join(f"{s} {v['force_rmse']:.4f}" for s, v in m["per_species"].items()))
    err = np.abs(result.energies - result.reference_energies) / result.n_atoms
    ref = dataset.referenced_energies_per_atom()[test.indices]
    print(f"training range of (E - sum E_ref)/N: {train_e.min():.3f} .. {train_e.max():.3f} "
          "eV/atom; largest test errors:")
    for k in np.argsort(err)[::-1][:3]:
        print(f"  {Path(result.names[k]).name}: {1000 * err[k]:.1f} meV/atom, {result.n_atoms[k]} "
              f"atoms, (E - sum E_ref)/N = {ref[k]:.3f} eV/atom")
    inside = (ref >= train_e.min()) & (ref <= train_e.max())
    if inside.any() and not inside.all():
        rmse = float(np.sqrt(np.mean(err[inside] ** 2)))
        print(f"test structures inside the training energy range ({int(inside.sum())}): energy "
              f"RMSE {1000 * rmse:.2f} meV/atom")


if __name__ == "__main__":
    main()
