"""Write the tiny model files that tests/test_model_registry.py loads.

They pin the model-file formats users hold today (schemas ``nnpflow.ann_potential``
v1 and ``nnpflow.layer_stack`` v1): every later nnpflow must load them and
predict what the code that wrote them predicted (``expected.json``).  Run with
the code whose files should be pinned on the path, e.g.::

    git archive f0c176d src | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base/src python tests/data/model_files/make_model_files.py

(f0c176d: the commit before the model registry; the committed files were made so).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def structures():
    from nnpflow.structure import Structure
    cell = np.array([[3.6, 0.1, 0.0], [0.0, 3.7, 0.2], [0.1, 0.0, 3.5]])
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
    rng = np.random.default_rng(7)
    crystal = Structure(positions=frac @ cell + rng.normal(0, 0.05, (4, 3)),
                        species=["Cu", "Au", "Cu", "Cu"], cell=cell, pbc=(True, True, True),
                        name="crystal")
    molecule = Structure(positions=np.array([[0.0, 0.0, 0.0], [2.4, 0.1, 0.0],
                                             [1.2, 2.1, 0.2]]),
                         species=["Au", "Cu", "Cu"], name="cluster")
    return [crystal, molecule]


def ann(path: Path) -> None:
    from nnpflow.descriptors import ChebyshevDescriptor
    from nnpflow.training.normalization import EnergyNormalization
    from nnpflow.training.potential import TorchANNPotential
    descriptor = ChebyshevDescriptor(["Cu", "Au"], rad_order=3, rad_cutoff=4.0, ang_order=2,
                                     ang_cutoff=3.5)
    pot = TorchANNPotential({"Cu": [(4, "tanh")], "Au": [(3, "sigmoid")]}, descriptor)
    pot.net.init_weights(torch.Generator().manual_seed(3))
    with torch.no_grad():
        pot.net.feature_mean.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(4))
        pot.net.feature_std.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(5))
    pot.energy_normalization = EnergyNormalization(shift=-0.4, scale=0.6)
    pot.atomic_energies = {"Cu": -1.5, "Au": -2.25}
    pot.history = [{"epoch": 1, "lr": 0.01, "train_loss": 1.0}]
    pot.save(path)


def schnet(path: Path) -> None:
    from nnpflow.models.model_file import save_layer_stack
    from nnpflow.models.stack import LayerStack
    torch.manual_seed(11)
    layers = [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
              {"name": "RandomAtomEmbedding"},
              {"name": "Core", "params": {"num_interactions": 1, "hidden_channels": 6}},
              {"name": "AtomicAffine"}, {"name": "EnergyReduce"}, {"name": "Force"}]
    model = LayerStack("SchNet", layers, {"dim_embedding": 6, "num_rbf": 5, "max_Za": 80,
                                          "cutoff_sr": 3.5})
    save_layer_stack(path, model, metadata={"note": "pinned format"})


def main() -> None:
    from nnpflow.calculator import NNPCalculator
    files = {"ann": HERE / "ann_potential_v1.pt", "schnet": HERE / "layer_stack_v1.pt"}
    ann(files["ann"])
    schnet(files["schnet"])
    expected = {}
    for name, path in files.items():
        rows = []
        for s in structures():
            atoms = s.to_ase()
            atoms.calc = NNPCalculator(path)
            rows.append({"structure": s.name, "energy": float(atoms.get_potential_energy()),
                         "forces": atoms.get_forces().tolist()})
        expected[path.name] = rows
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()
    import nnpflow
    (HERE / "expected.json").write_text(json.dumps(
        {"written_by": f"nnpflow {nnpflow.__version__} ({nnpflow.__file__}, tree at {commit})",
         "predictions": expected}, indent=1) + "\n")


if __name__ == "__main__":
    main()
