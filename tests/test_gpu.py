"""The device code paths: a database build with ``database.device``, ANN force and
energy-only training, SchNet training and the ASE calculator on each device,
against the CPU's results.

Every test runs on the CPU (in CI: the device plumbing of the same code) and,
marked ``gpu``, on CUDA when a device is present (``benchmarks/gpu_suite.sh``
runs them); the CUDA runs compare with CPU runs of the same seeds.  The
descriptor's own CUDA tests are in test_descriptor.py and test_neighbors.py; the
whole example workflow on CUDA is ``test_example_workflow_on_cuda``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nnpflow.database import DatabaseReader, write_database
from nnpflow.descriptors import DescriptorDerivatives
from nnpflow.stages import build
from nnpflow.stages.train import run as train_stage
from nnpflow.training.potential import read_history_csv

from test_ann_data import emt_cells, small_descriptor
from test_train_stage import ANN, TRAINING, make_inputs

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")])
DEVICES = ["cpu", CUDA]

SCHNET = {"architecture": "schnet",
          "build_params": {"dim_embedding": 8, "num_rbf": 6, "max_Za": 80, "cutoff_sr": 4.0},
          "layers": [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
                     {"name": "RandomAtomEmbedding"},
                     {"name": "Core", "params": {"num_interactions": 1, "hidden_channels": 8}},
                     {"name": "AtomicAffine"}, {"name": "EnergyReduce"}, {"name": "Force"}]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """database.h5 (20 EMT Cu/Au cells, features and derivatives) and split.json."""
    return make_inputs(tmp_path_factory.mktemp("device"))


@pytest.mark.parametrize("device", DEVICES)
def test_build_stage_on_device_matches_the_cpu_descriptor(tmp_path, device):
    cells = emt_cells(6, seed=5)
    raw = write_database(tmp_path / "raw.h5", cells)
    desc = small_descriptor()
    settings = {k: v for k, v in desc.config().items()
                if k in ("rad_order", "rad_cutoff", "ang_order", "ang_cutoff", "min_cutoff")}
    build.run(structures=str(raw), database=str(tmp_path / "db.h5"), descriptor=settings,
              database_cfg={"device": device, "dtype": "float64"}, species=desc.species)
    feats, ders = desc.featurize_batch_with_derivatives(cells)   # CPU, float64
    with DatabaseReader(tmp_path / "db.h5") as db:
        assert db.descriptor_sha256 == desc.fingerprint
        for i, (f, d) in enumerate(zip(feats, ders)):
            stored = torch.as_tensor(db.features(i))
            assert float((stored - f).abs().max() / f.abs().max()) < 1e-12
            again = DescriptorDerivatives.from_arrays(db.derivative_arrays(i),
                                                      d.species_index, desc)
            w = torch.randn(len(cells[i]), desc.n_features, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(i))
            ref = d.forces(w)
            assert float((again.forces(w) - ref).norm() / ref.norm()) < 1e-12


def _train(inputs, out: Path, model_cfg, training) -> list[dict]:
    db, split = inputs
    train_stage(str(db), str(split), str(out / "model.pt"), str(out / "history.csv"), "m",
                model_cfg, training, 0)
    return read_history_csv(out / "history.csv")


@pytest.fixture(scope="module")
def cpu_runs(inputs, tmp_path_factory):
    """The CPU's histories and model files of the three trainings below."""
    out = {}
    for name, model_cfg, training in _TRAININGS:
        folder = tmp_path_factory.mktemp(f"cpu-{name}")
        out[name] = (_train(inputs, folder, model_cfg, training), folder / "model.pt")
    return out


_TRAININGS = [
    ("ann-forces", {**ANN, "committee": 1}, {**TRAINING, "epochs": 2, "force_weight": 0.2}),
    ("ann-energy", {**ANN, "committee": 1},
     {**TRAINING, "epochs": 2, "force_weight": 0.0}),
    ("schnet", SCHNET, {**TRAINING, "epochs": 2, "force_weight": 0.0}),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, model_cfg, training", _TRAININGS,
                         ids=[t[0] for t in _TRAININGS])
def test_training_on_device_follows_the_cpu(inputs, cpu_runs, tmp_path, device, name,
                                            model_cfg, training):
    history = _train(inputs, tmp_path, model_cfg, {**training, "device": device})
    reference, _ = cpu_runs[name]
    assert [r["epoch"] for r in history] == [1, 2]
    for row, ref in zip(history, reference):
        for key in ("train_loss", "val_loss"):
            assert np.isfinite(row[key])
            # same seed, same data: the device's float32 rounding only
            assert row[key] == pytest.approx(ref[key], rel=1e-3 if device == "cuda" else 1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["ann-forces", "schnet"])
def test_calculator_on_device_matches_the_cpu(cpu_runs, device, name):
    from ase.build import bulk

    from nnpflow.calculator import NNPCalculator
    _, model = cpu_runs[name]
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
    atoms.set_chemical_symbols(["Cu", "Au", "Au", "Cu", "Cu", "Cu", "Au", "Cu"])
    atoms.rattle(0.05, seed=3)
    ref = atoms.copy()
    ref.calc = NNPCalculator(model)                       # CPU, float64
    atoms.calc = NNPCalculator(model, device=device)
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(),
                                                         abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=1e-9)
    assert np.abs(ref.get_forces()).max() > 0


@pytest.mark.gpu
@pytest.mark.workflow
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_example_workflow_on_cuda(tmp_path, copy_workflow):
    """The example DAG with database.device and training.device cuda."""
    cfg = copy_workflow(tmp_path)
    cfg["example"].update(n_structures=24)
    cfg["database"].update(shards=2, device="cuda")
    cfg["training"].update(epochs=3, device="cuda", patience=0)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2",
                           "--resources", "gpu=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    results = tmp_path / "results"
    metrics = json.loads((results / "evaluation" / "ann" / "metrics.json").read_text())
    assert metrics["test"]["force_rmse"] > 0
    from nnpflow.training.potential import TorchANNPotential
    pot = TorchANNPotential.from_file(results / "models" / "ann" / "member_0" / "model.pt")
    assert pot.training_info["config"]["device"] == "cuda"


def test_generic_branches_of_the_cpu_shortcuts_agree():
    """The descriptor takes numpy shortcuts on the CPU (blocked transposes); on
    other devices (and for tensors that need gradients) the generic torch branch
    runs: both give the same arrays."""
    from nnpflow.descriptors.chebyshev import transposed
    from nnpflow.descriptors.derivatives import _edge_components
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        v = torch.randn(50, 3, dtype=dtype, generator=g)
        generic = _edge_components(v.clone().requires_grad_(True), 9.0).detach()
        assert torch.equal(_edge_components(v, 9.0), generic)
        assert generic[:, -1].tolist() == [9.0, 0.0, 0.0]
        t = torch.randn(7, 40, dtype=dtype, generator=g)
        assert torch.equal(transposed(t), transposed(t.clone().requires_grad_(True)).detach())
        assert torch.equal(transposed(t), t.t())
