"""ANN model files, history export, checkpoints, exact resume (also after a real
SIGTERM in a subprocess), the resume guard, and TorchTrainingConfig validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from nnpflow.errors import ConfigError, ResumeMismatchError, SchemaError
from nnpflow.training.checkpoint import load_checkpoint
from nnpflow.training.config import SGD, Adam, TorchTrainingConfig
from nnpflow.training.interrupt import TrainingInterrupted
from nnpflow.training.potential import TorchANNPotential, read_history_csv

from test_ann_data import ARCH, emt_cells, small_descriptor

TESTS = Path(__file__).resolve().parent
CELLS_SEED = 9


@pytest.fixture(scope="module")
def cells():
    return emt_cells(16, seed=CELLS_SEED, no_forces_every=5)


def resume_config(checkpoint_dir, **changes) -> TorchTrainingConfig:
    """A run that exercises every piece of state: Adam, a warmup + cosine schedule
    per step, EMA, random force subsets, early stopping, best weights."""
    kw = dict(iterations=4, method=Adam(mu=0.02, batchsize=5), testpercent=25, seed=1,
              force_weight=0.3, force_fraction=0.5, force_sampling="random",
              schedule="cosine", warmup_ratio=0.2, ema_decay=0.8, patience=10,
              max_grad_norm=5.0, checkpoint_dir=str(checkpoint_dir), device="cpu",
              precision="float64")
    kw.update(changes)
    return TorchTrainingConfig(**kw)


def same_weights(a: TorchANNPotential, b: TorchANNPotential) -> bool:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def strip_times(history):
    return [{k: v for k, v in row.items() if k != "time_s"} for row in history]


@pytest.fixture(scope="module")
def uninterrupted(cells, tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    pot = TorchANNPotential(ARCH, small_descriptor())
    pot.train(structures=cells, config=resume_config(folder / "ckpt"))
    return pot, folder


# ------------------------------------------------------------------ files
def test_save_and_load_round_trip_is_exact(uninterrupted, cells, tmp_path):
    pot, _ = uninterrupted
    path = tmp_path / "model.pt"
    pot.save(path)
    payload = torch.load(path, weights_only=True)        # no pickled code
    assert payload["schema"] == "nnpflow.model" and payload["schema_version"] == 2
    assert payload["family"] == "ann" and payload["family_version"] == 1
    assert payload["settings"]["architecture"] == {"Cu": [[6, "tanh"], [6, "tanh"]],
                                                   "Au": [[6, "tanh"], [6, "tanh"]]}
    assert payload["settings"]["descriptor"] == pot.descriptor.config()
    assert payload["state_dict"]["feature_mean"].shape == (2, pot.descriptor.n_features)
    loaded = TorchANNPotential.from_file(path)
    assert same_weights(pot, loaded)
    assert loaded.energy_normalization == pot.energy_normalization
    assert loaded.history == pot.history and loaded.training_info == pot.training_info
    a, b = pot.predict(cells), loaded.predict(cells)
    assert np.array_equal(a.energies, b.energies)
    assert all(np.array_equal(x, y) for x, y in zip(a.forces, b.forces))
    # history as CSV and JSON
    pot.export_history(tmp_path / "h.csv", tmp_path / "h.json")
    rows = read_history_csv(tmp_path / "h.csv")
    assert rows == json.loads((tmp_path / "h.json").read_text()) == pot.history
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_unknown_newer_or_broken_files_are_refused(uninterrupted, tmp_path):
    pot, folder = uninterrupted
    payload = pot.to_payload()
    newer = tmp_path / "newer.pt"
    torch.save({**payload, "schema_version": 3}, newer)
    with pytest.raises(SchemaError, match="newer than this nnpflow understands"):
        TorchANNPotential.from_file(newer)
    with pytest.raises(SchemaError, match="holds 'nnpflow.checkpoint', not an nnpflow model"):
        TorchANNPotential.from_file(folder / "ckpt" / "checkpoint_last.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes((tmp_path / "newer.pt").read_bytes()[:200])
    with pytest.raises(SchemaError, match="not a readable nnpflow model file"):
        TorchANNPotential.from_file(broken)
    bad = tmp_path / "bad.pt"
    torch.save({**payload, "settings": {**payload["settings"],
                                        "architecture": {"Cu": [[6, "tanh"]]}}}, bad)
    with pytest.raises(SchemaError, match="malformed ANN potential"):
        TorchANNPotential.from_file(bad)


def test_checkpoints_hold_the_full_state(uninterrupted):
    pot, folder = uninterrupted
    ckpt = folder / "ckpt"
    assert sorted(p.name for p in ckpt.glob("*.pt")) == [
        "checkpoint_0001.pt", "checkpoint_0002.pt", "checkpoint_0003.pt", "checkpoint_0004.pt",
        "checkpoint_last.pt"]
    state = load_checkpoint(ckpt / "checkpoint_last.pt")       # weights_only load
    for key in ("model", "optimizer", "scheduler", "ema", "early_stopping", "best", "rng",
                "progress", "history", "identity"):
        assert state[key] is not None, key
    assert state["progress"]["finished"] and state["progress"]["epoch"] == 4
    assert state["scheduler"]["name"] == "cosine" and state["scheduler"]["steps_done"] == 12
    assert state["identity"]["config"]["force_fraction"] == 0.5
    # final weights: the EMA weights of the best epoch
    best = state["best"]
    assert pot.training_info["best_epoch"] == best["epoch"]
    assert all(torch.equal(pot.net.state_dict()[k], v) for k, v in best["state_dict"].items())


# ----------------------------------------------------------------- resume
def test_interrupt_and_resume_in_process_is_bit_identical(uninterrupted, cells, tmp_path):
    full, _ = uninterrupted
    cfg = resume_config(tmp_path / "ckpt")

    def sigterm_at_epoch_2_step_2(epoch, step):
        if (epoch, step) == (1, 1):
            os.kill(os.getpid(), signal.SIGTERM)   # a real signal, as SLURM sends it

    pot = TorchANNPotential(ARCH, small_descriptor())
    with pytest.raises(TrainingInterrupted, match="epoch 2, step 2/3") as exc:
        pot.train(structures=cells, config=cfg, on_step=sigterm_at_epoch_2_step_2)
    assert exc.value.exit_status == 128 + signal.SIGTERM
    last = tmp_path / "ckpt" / "checkpoint_last.pt"
    assert exc.value.checkpoints == [last]
    assert load_checkpoint(last)["progress"] == {**load_checkpoint(last)["progress"],
                                                 "epoch": 1, "step_in_epoch": 2,
                                                 "finished": False}
    resumed = TorchANNPotential(ARCH, small_descriptor())
    history = resumed.train(structures=cells, config=cfg, resume_from=last)
    assert same_weights(resumed, full)
    assert strip_times(history) == strip_times(full.history)
    # resuming a finished run does nothing and keeps the result
    again = TorchANNPotential(ARCH, small_descriptor())
    again.train(structures=cells, config=cfg, resume_from=last)
    assert same_weights(again, full)


RUNNER = textwrap.dedent("""
    import os, signal, sys
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[1])
    from test_ann_data import ARCH, emt_cells, small_descriptor
    from test_ann_files import CELLS_SEED, resume_config
    from nnpflow.training.interrupt import TrainingInterrupted
    from nnpflow.training.potential import TorchANNPotential
    stop_at = tuple(int(x) for x in sys.argv[3].split(","))

    def hook(epoch, step):
        if (epoch, step) == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    pot = TorchANNPotential(ARCH, small_descriptor())
    try:
        pot.train(structures=emt_cells(16, seed=CELLS_SEED, no_forces_every=5),
                  config=resume_config(sys.argv[2]), on_step=hook)
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        sys.exit(exc.exit_status)
    """)


def test_sigterm_in_a_subprocess_then_resume_equals_uninterrupted(uninterrupted, cells,
                                                                   tmp_path):
    full, _ = uninterrupted
    ckpt = tmp_path / "ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(TESTS), str(ckpt), "2,0"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "stopped by SIGTERM at epoch 3, step 1/3" in proc.stderr
    resumed = TorchANNPotential(ARCH, small_descriptor())
    history = resumed.train(structures=cells, config=resume_config(ckpt),
                            resume_from=ckpt / "checkpoint_last.pt")
    assert same_weights(resumed, full)
    assert strip_times(history) == strip_times(full.history)


def test_resume_guard_names_changes_unless_forced(uninterrupted, cells, tmp_path):
    _, folder = uninterrupted
    last = folder / "ckpt" / "checkpoint_0002.pt"
    pot = TorchANNPotential(ARCH, small_descriptor())
    with pytest.raises(ResumeMismatchError) as exc:
        pot.train(structures=cells, resume_from=last,
                  config=resume_config(tmp_path / "a", force_weight=0.4))
    assert "config.force_weight: 0.3 -> 0.4" in str(exc.value)
    with pytest.raises(ResumeMismatchError, match="data.training"):
        pot.train(structures=cells[:-1], resume_from=last, config=resume_config(tmp_path / "b"))
    with pytest.raises(ResumeMismatchError, match="architecture"):
        TorchANNPotential({"Cu": [(5, "tanh")], "Au": [(5, "tanh")]}, small_descriptor()).train(
            structures=cells, resume_from=last, config=resume_config(tmp_path / "c"))
    # runtime options may change; forced resumes go on with the new settings
    history = pot.train(structures=cells, resume_from=last,
                        config=resume_config(tmp_path / "d", force_weight=0.4),
                        force_resume=True)
    assert len(history) == 4 and history[2]["epoch"] == 3
    with pytest.raises(ConfigError, match="does not exist"):
        pot.train(structures=cells, resume_from=tmp_path / "missing.pt",
                  config=resume_config(tmp_path / "e"))


def test_max_checkpoints_keeps_the_newest(cells, tmp_path):
    pot = TorchANNPotential(ARCH, small_descriptor())
    pot.train(structures=cells, config=resume_config(tmp_path, iterations=5, max_checkpoints=2,
                                                     checkpoint_interval=2))
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [
        "checkpoint_0002.pt", "checkpoint_0004.pt", "checkpoint_last.pt"]


# ----------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs, message", [
    ({"iteratons": 5}, "unknown field.*iteratons.*did you mean 'iterations'"),
    ({"iterations": -1}, "iterations: must be >= 0"),
    ({"iterations": 2.5}, "iterations: expected an integer"),
    ({"testpercent": 120}, "testpercent: must be <= 100"),
    ({"force_weight": 1.5}, "force_weight: must be <= 1"),
    ({"force_weight": 0.1, "force_fraction": 0.0}, "force_fraction: must be > 0"),
    ({"force_weight": 0.1, "force_sampling": "sometimes"}, "force_sampling: must be"),
    ({"cache_feature_max_entries": 10}, "cache_feature_max_entries=10 bounds a cache that is "
                                        "disabled"),
    ({"cache_force_triplets": True, "cache_force_triplet_max_entries": 0},
     "cache_force_triplet_max_entries: must be >= 1"),
    ({"cache_warmup": True}, "cache_warmup=True needs a runtime cache"),
    ({"prefetch_factor": 4}, "prefetch_factor only applies with num_workers > 0"),
    ({"num_workers": -1}, "num_workers: must be >= 0"),
    ({"schedule": "step"}, "schedule: unknown schedule 'step'"),
    ({"use_scheduler": True, "schedule": "cosine"}, "contradicts schedule='cosine'"),
    ({"schedule": "cosine", "schedule_params": {"factor": 0.5}},
     "schedule 'cosine' takes no parameter.*factor"),
    ({"ema_decay": 1.0}, "ema_decay: must be < 1"),
    ({"max_grad_norm": 0}, "max_grad_norm: must be > 0"),
    ({"checkpoint_interval": 2}, "checkpoint_interval/max_checkpoints need checkpoint_dir"),
    ({"device": "tpu"}, "device: expected"),
    ({"precision": "half"}, "precision: must be 'float32' or 'float64'"),
    ({"method": "adam"}, "method: expected Adam"),
    ({"atomic_energies": {"Cu": "x"}}, r"atomic_energies\['Cu'\]: expected a number"),
    ({"save_best": "yes"}, "save_best: expected True or False"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TorchTrainingConfig(**kwargs)


def test_config_optimisers_and_round_trip():
    with pytest.raises(ConfigError, match="Adam.mu: must be > 0"):
        Adam(mu=0)
    with pytest.raises(ConfigError, match="SGD: unknown field.*nesterov"):
        SGD(nesterov=True)
    cfg = TorchTrainingConfig(method=SGD(lr=0.1, batchsize=4, momentum=0.5), use_scheduler=True,
                              schedule_params={"patience": 3})
    assert cfg.schedule == "plateau" and cfg.batch_size == 4 and cfg.alpha == 0.0
    assert TorchTrainingConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    opt = cfg.method.make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.5
    # the epoch count is part of the identity only when it shapes the learning rate
    assert "iterations" not in TorchTrainingConfig(iterations=3).identity()
    assert "iterations" in TorchTrainingConfig(iterations=3, schedule="cosine").identity()
