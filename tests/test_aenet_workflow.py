"""The workflow evaluates existing aenet potential files: a ``models:`` entry with
``architecture: aenet`` and ``files:`` is imported (rule ``import_aenet``) and
evaluated like a trained model, without training.

The aenet files are written by nnpflow's exporter (no Fortran needed) for a
descriptor other than the workflow's, so the evaluation featurises the
database's structures with the potential's own descriptor.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nnpflow.aenet import export_aenet
from nnpflow.descriptors import ChebyshevDescriptor
from nnpflow.training.normalization import EnergyNormalization
from nnpflow.training.potential import TorchANNPotential, prediction_metrics

from test_workflow import _no_slurm_bin, job_set, planned_jobs, snakemake

pytestmark = pytest.mark.workflow

SPECIES = ["Cu", "Au", "Pt"]


def write_aenet_files(folder: Path, seed: int) -> TorchANNPotential:
    """Export a small random potential (EMT-like energy scale) as aenet files."""
    descriptor = ChebyshevDescriptor(SPECIES, 4, 4.2, 2, 3.2, min_cutoff=0.6)
    pot = TorchANNPotential({"Cu": [(4, "tanh")], "Au": [(3, "twist")], "Pt": []}, descriptor)
    pot.net.init_weights(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        pot.net.feature_mean.uniform_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
        pot.net.feature_std.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    pot.energy_normalization = EnergyNormalization(shift=0.2, scale=0.3)
    pot.atomic_energies = {"Cu": -0.1, "Au": -0.2, "Pt": -0.3}
    export_aenet(pot, folder)
    return pot


@pytest.fixture
def aenet_workdir(tmp_path, copy_workflow):
    cfg = copy_workflow(tmp_path)
    cfg["example"].update(n_structures=6, archive_fraction=0.5, seed=3)
    cfg["database"]["shards"] = 2
    cfg["evaluate"]["plots"] = True   # the learning curve of an empty history too
    cfg["split"] = {"validation": 0.2, "test": 1, "seed": 7}
    cfg["models"] = {"ref": {"architecture": "aenet",
                             "files": ["aenet/Cu.nn", "aenet/Au.nn", "aenet/Pt.nn.ascii"]}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    write_aenet_files(tmp_path / "aenet", seed=5)
    return tmp_path


def test_aenet_model_is_imported_and_evaluated_not_trained(aenet_workdir):
    jobs = job_set(planned_jobs(aenet_workdir))
    assert jobs[("import_aenet", "ref")] == 1, jobs
    assert jobs[("evaluate", "ref")] == 1, jobs
    assert not [k for k in jobs if k[0] == "train"], jobs

    snakemake(aenet_workdir, "--cores", "2")
    results = aenet_workdir / "results"
    metrics = json.loads((results / "evaluation" / "ref" / "metrics.json").read_text())
    assert metrics["model"]["files"] == ["results/models/ref/aenet/model.pt"]
    assert (results / "evaluation" / "ref" / "learning_curve.png").stat().st_size > 0
    # the same numbers as the aenet files imported by hand, on the database's structures
    from nnpflow.database import DatabaseReader
    from nnpflow.splitting import load_split
    pot = TorchANNPotential.from_aenet([aenet_workdir / "aenet" / f"{s}.nn" for s in SPECIES])
    database = results / "database" / "database.h5"
    with DatabaseReader(database) as reader:
        parts = load_split(results / "split" / "split.json", reader, n_structures=len(reader))
        for part in ("train", "test"):
            structures = reader.structures([int(i) for i in parts.indices[part]])
            expected = prediction_metrics(pot.predict(structures))
            got = metrics[part]
            assert got["n_structures"] == len(structures) > 0
            assert got["energy_rmse_per_atom"] == pytest.approx(
                expected["energy_rmse_per_atom"], rel=1e-9)
            assert got["force_rmse"] == pytest.approx(expected["force_rmse"], rel=1e-9)
    assert np.isfinite(metrics["train"]["energy_rmse_per_atom"])

    # a changed aenet file reruns the import and the evaluation, nothing else
    write_aenet_files(aenet_workdir / "aenet", seed=6)
    assert job_set(planned_jobs(aenet_workdir)) == Counter(
        {("import_aenet", "ref"): 1, ("evaluate", "ref"): 1, ("summary", None): 1,
         ("all", None): 1})


@pytest.mark.parametrize("model, message", [
    ({"architecture": "aenet"}, "'files' is a required property"),
    ({"architecture": "aenet", "files": ["a.nn"], "hidden": [[4, "tanh"]]},
     "hidden belongs to ann models"),
    ({"architecture": "aenet", "files": ["a.nn"], "committee": 2},
     "models/m/committee: 1 was expected"),
    ({"architecture": "ann", "hidden": [[4, "tanh"]], "files": ["a.nn"]},
     "files belongs to aenet models"),
])
def test_config_schema_checks_aenet_models(aenet_workdir, model, message):
    import subprocess
    import sys
    cfg = yaml.safe_load((aenet_workdir / "config" / "config.yaml").read_text())
    cfg["models"] = {"m": model}
    (aenet_workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    import os
    env = dict(os.environ, PATH=os.pathsep.join([_no_slurm_bin(), os.environ.get("PATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--cores", "1"],
                          cwd=aenet_workdir, capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
