"""Data-parallel ANN training (``training.devices > 1``): two CPU processes with the
gloo backend give the same training as one process with the same global batch;
a failing worker is reported with its output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnpflow.stages.train import run
from nnpflow.training.distributed import launch
from nnpflow.training.potential import TorchANNPotential, read_history_csv

from test_train_stage import ANN, TRAINING, make_inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("ddp"))


def test_two_gloo_processes_equal_one_process(inputs, tmp_path):
    db, split = inputs
    # batch 5 over 14 structures: the last batch (4) splits 2 + 2, and with
    # force_fraction < 1 some shares have no force structure at all
    training = {**TRAINING, "batch_size": 5, "force_fraction": 0.5, "epochs": 3}
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        summary = run(str(db), str(split), str(out / "model.pt"), str(out / "history.csv"),
                      "ann", ANN, {**training, "devices": devices}, 0, threads=2)
        assert summary["processes"] == devices and summary["epochs"] == 3
        results[devices] = (TorchANNPotential.from_file(out / "model.pt"),
                            read_history_csv(out / "history.csv"))
    (one, h1), (two, h2) = results[1], results[2]
    assert two.training_info["world_size"] == 2
    for k, v in one.net.state_dict().items():
        # float32 training: equal up to the order of the summations
        assert torch.allclose(v, two.net.state_dict()[k], rtol=1e-5, atol=1e-6), k
    for r1, r2 in zip(h1, h2):
        for key in ("train_loss", "val_loss", "val_force_rmse"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), key
        assert r1["force_structures"] == r2["force_structures"]
    assert not np.isclose(h1[0]["train_loss"], h1[-1]["train_loss"])   # it trained


def failing_worker(message: str) -> None:
    import torch.distributed as dist
    if dist.get_rank() == 1:
        raise ValueError(message)
    dist.barrier()


def test_a_failing_worker_is_reported(tmp_path, monkeypatch):
    from pathlib import Path
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))
    with pytest.raises(RuntimeError,
                       match=r"(?s)rank 1 of 2 exited with status 1.*ValueError: bad input here"):
        launch("test_distributed:failing_worker", ["bad input here"], 2,
               rendezvous_dir=tmp_path)


def test_two_gloo_processes_equal_one_process_for_schnet(inputs, tmp_path):
    """The layer-stack (SchNet) model through the same loop: each rank's share of
    the global batch, per-term error sums over ranks, the same result as one
    process (which takes the batch's weighted loss directly)."""
    from nnpflow.models.model_file import load_layer_stack

    from test_gpu import SCHNET
    db, split = inputs
    training = {**TRAINING, "batch_size": 5, "force_weight": 0.0, "epochs": 3,
                "ema_decay": 0.5}
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        summary = run(str(db), str(split), str(out / "model.pt"), str(out / "history.csv"),
                      "schnet", SCHNET, {**training, "devices": devices}, 0, threads=2)
        assert summary["architecture"] == "schnet"
        assert summary.get("processes", 1) == devices
        results[devices] = (load_layer_stack(out / "model.pt")[0].state_dict(),
                            read_history_csv(out / "history.csv"))
    (one, h1), (two, h2) = results[1], results[2]
    assert len(h1) == len(h2) == 3
    for k, v in one.items():
        assert torch.allclose(v, two[k], rtol=1e-5, atol=1e-6), k
    for r1, r2 in zip(h1, h2):
        for key in ("train_loss", "val_loss", "lr"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), key
    assert not np.isclose(h1[0]["train_loss"], h1[-1]["train_loss"])   # it trained


def waiting_worker(folder: str) -> None:
    """Waits for SIGTERM (at most a minute), then stops as training does."""
    import time
    from pathlib import Path

    import torch.distributed as dist

    from nnpflow.training.interrupt import GracefulInterrupt, TrainingInterrupted
    rank = dist.get_rank()
    with GracefulInterrupt() as stop:
        (Path(folder) / f"ready_{rank}").touch()
        deadline = time.time() + 60
        while not stop.requested and time.time() < deadline:
            time.sleep(0.05)
        if stop.requested:
            (Path(folder) / f"stopped_{rank}").touch()
            raise TrainingInterrupted(f"rank {rank} stopped")


LAUNCHER = """
import sys
sys.path.insert(0, sys.argv[1])
from nnpflow.training.distributed import launch
from nnpflow.training.interrupt import TrainingInterrupted
try:
    launch("test_distributed:waiting_worker", [sys.argv[2]], 2, rendezvous_dir=sys.argv[2])
except TrainingInterrupted as exc:
    print(exc)
    sys.exit(exc.exit_status)
print("not interrupted")
"""


def test_sigterm_to_the_launcher_reaches_every_worker(tmp_path):
    """SIGTERM to the launching process only (as Snakemake or SLURM sends it to a
    job's process) is forwarded to both workers; their graceful stop becomes the
    launcher's TrainingInterrupted (exit status 143)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(Path(__file__).parent),
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not all((tmp_path / f"ready_{r}").exists()
                                             for r in (0, 1)):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out[-3000:]
    assert "distributed training stopped by SIGTERM" in out
    assert (tmp_path / "stopped_0").exists() and (tmp_path / "stopped_1").exists()
