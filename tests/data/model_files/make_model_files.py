"""Write the tiny model files that tests/test_model_registry.py loads.

They pin the model-file formats users hold (schemas ``nnpflow.ann_potential``
v1 and ``nnpflow.layer_stack`` v1, the formats before the one ``nnpflow.model``
envelope): every later nnpflow must load them and predict what the code that
wrote them predicted.  Run with the code whose files should be pinned on the
path, e.g.::

    git archive f0c176d src | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base/src python tests/data/model_files/make_model_files.py

writes ``ann_potential_v1.pt``, ``layer_stack_v1.pt`` and ``expected.json``
(f0c176d: the commit before the model registry; the committed files were made so).
With ``--tag TAG`` the names carry ``_TAG`` and a two-member ANN committee
(``ANNCommittee.save``: ``ann_committee_v1_TAG/member_{0,1}.pt``) is written too,
with its committee-mean predictions in ``expected_TAG.json``; the ``9b879bb``
files were made so from 9b879bb (the last commit before the ``nnpflow.model``
envelope)::

    git archive 9b879bb src | tar -x -C /tmp/v1
    PYTHONPATH=/tmp/v1/src python tests/data/model_files/make_model_files.py --tag 9b879bb
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


def ann(path: Path, seed: int = 3) -> None:
    from nnpflow.descriptors import ChebyshevDescriptor
    from nnpflow.training.normalization import EnergyNormalization
    from nnpflow.training.potential import TorchANNPotential
    descriptor = ChebyshevDescriptor(["Cu", "Au"], rad_order=3, rad_cutoff=4.0, ang_order=2,
                                     ang_cutoff=3.5)
    pot = TorchANNPotential({"Cu": [(4, "tanh")], "Au": [(3, "sigmoid")]}, descriptor)
    pot.net.init_weights(torch.Generator().manual_seed(seed))
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


def committee(folder: Path) -> list[Path]:
    """Two ANN members (weights seeded 3 and 13) saved by ``ANNCommittee.save``."""
    from nnpflow.training.committee import ANNCommittee
    from nnpflow.training.potential import TorchANNPotential
    members = []
    for seed in (3, 13):
        ann(folder / "tmp.pt", seed)
        members.append(TorchANNPotential.from_file(folder / "tmp.pt"))
    (folder / "tmp.pt").unlink()
    return ANNCommittee(members).save(folder)


def main(tag: str | None = None) -> None:
    from nnpflow.calculator import NNPCalculator
    suffix = f"_{tag}" if tag else ""
    files = {"ann": HERE / f"ann_potential_v1{suffix}.pt",
             "schnet": HERE / f"layer_stack_v1{suffix}.pt"}
    ann(files["ann"])
    schnet(files["schnet"])
    if tag:
        folder = HERE / f"ann_committee_v1{suffix}"
        folder.mkdir(exist_ok=True)
        files["committee"] = committee(folder)
    expected = {}
    for name, path in files.items():
        rows = []
        for s in structures():
            atoms = s.to_ase()
            atoms.calc = NNPCalculator(path)
            rows.append({"structure": s.name, "energy": float(atoms.get_potential_energy()),
                         "forces": atoms.get_forces().tolist()})
        key = (path[0].parent.name if isinstance(path, list) else path.name)
        expected[key] = rows
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()
    import nnpflow
    (HERE / f"expected{suffix}.json").write_text(json.dumps(
        {"written_by": f"nnpflow {nnpflow.__version__} ({nnpflow.__file__}, tree at {commit})",
         "predictions": expected}, indent=1) + "\n")


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", help="suffix of the file names; adds the committee files")
    main(parser.parse_args().tag)
