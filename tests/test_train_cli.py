"""``nnpflow train -c train.yaml -o DIR`` end to end on a tiny Enerzyme pickle:
outputs, reuse of processed data and splits, no silent warm start, resume guard,
config errors naming the key path, SIGTERM and exact resume."""

from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nnpflow.cli import main
from nnpflow.errors import ConfigError, ResumeMismatchError
from nnpflow.models.model_file import load_layer_stack
from nnpflow.training.datahub import datahub_hash
from nnpflow.training.splitter import split_key
from nnpflow.training.yaml_config import resolve_config

MODEL_DIR = "FF01-SchNet-tiny"


#: the atomic reference energies (eV) of :func:`make_dataset`'s atomic_energy.csv
ATOMIC_ENERGIES = {"H": -0.1, "C": -0.2, "O": -0.3}


def write_methanol_frames(path: Path, n_frames: int, seed: int) -> dict:
    """A pickle of ``n_frames`` rattled CH3OH frames with EMT energies (eV) and energy
    gradients (eV/Å) in Enerzyme's dict-of-arrays layout; returns its content."""
    from ase.build import molecule
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    base = molecule("CH3OH")
    coords, energy, grad = [], [], []
    for _ in range(n_frames):
        atoms = base.copy()
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        coords.append(atoms.positions.copy())
        energy.append(atoms.get_potential_energy())
        grad.append(-atoms.get_forces())
    data = {"coordinates": np.array(coords), "atomic_numbers": base.numbers.copy(),
            "energy": np.array(energy), "gradient": np.array(grad)}
    with open(path, "wb") as fh:
        pickle.dump(data, fh)
    return data


def make_dataset(folder: Path, n_frames: int = 12, seed: int = 0) -> dict:
    """dataset.pkl (:func:`write_methanol_frames`) and atomic_energy.csv in ``folder``."""
    data = write_methanol_frames(folder / "dataset.pkl", n_frames, seed)
    (folder / "atomic_energy.csv").write_text(
        "atom_type,atomic_energy\n" + "".join(f"{k},{v}\n" for k, v in ATOMIC_ENERGIES.items()))
    return data


CONFIG = {
    "Datahub": {"data_path": "dataset.pkl", "data_format": "pickle",
                "features": {"Ra": "coordinates", "Za": "atomic_numbers"},
                "targets": {"E": "energy", "Fa": "gradient"}, "compression": True, "preload": True,
                "transforms": {"atomic_energy": "atomic_energy.csv", "negative_gradient": True}},
    "Modelhub": {"FF01": {
        "suffix": "tiny", "architecture": "SchNet", "active": True,
        "build_params": {"dim_embedding": 16, "num_rbf": 8, "max_Za": 10, "cutoff_sr": 4.0},
        "layers": [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
                   {"name": "RandomAtomEmbedding"},
                   {"name": "Core", "params": {"num_interactions": 2, "hidden_channels": 16}},
                   {"name": "AtomicAffine"}, {"name": "EnergyReduce"}, {"name": "Force"}],
        "loss": {"rmse": {"E": 1, "Fa": 10}}},
        "FF02": {"architecture": "SchNet", "active": False,
                 "layers": ["RangeSeparation", "GaussianSmearing", "RandomAtomEmbedding", "Core",
                            "EnergyReduce"],
                 "build_params": {"dim_embedding": 8, "num_rbf": 4, "max_Za": 10, "cutoff_sr": 3.0},
                 "loss": {"mae": {"E": 1}}}},
    "Trainer": {"Splitter": {"parts": ["training", "validation", "test"],
                             "ratios": [0.5, 0.25, 0.25], "seed": 3},
                "batch_size": 4, "max_epochs": 2, "learning_rate": 0.001, "warmup_ratio": 0.0,
                "patience": 5},
    "Metrics": {"rmse": {"E": 1, "Fa": 10}},
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    make_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(folder: Path, config=None, name="train.yaml", **changes) -> Path:
    config = copy.deepcopy(config or CONFIG)
    for path, value in changes.items():
        node = config
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    target = folder / name
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def logs(folder: Path) -> list[str]:
    return [p.read_text() for p in sorted((folder / "out" / "logs").glob("train-*.log"))]


def test_full_run_writes_every_output(workdir):
    config = write_config(workdir)
    assert main(["train", "-c", str(config), "-o", "out"]) == 0
    out = workdir / "out"
    model_dir = out / MODEL_DIR
    for name in ("model_best.pt", "model_last.pt", "history.csv", "test_metrics.json"):
        assert (model_dir / name).is_file(), name
    assert not (out / "FF02-SchNet").exists()  # inactive
    processed = list(out.glob("processed_dataset_*"))
    assert len(processed) == 1
    assert (processed[0] / "dataset.h5").is_file() and len(list(processed[0].glob("split_*.json"))) == 1
    # resolved configuration: defaults filled, provenance recorded
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["Trainer"]["schedule"] == "linear" and resolved["Trainer"]["ema_decay"] == 0.99
    assert resolved["Trainer"]["Splitter"]["method"] == "random"
    assert resolved["Datahub"]["data_path"] == str(workdir / "dataset.pkl")
    core = resolved["Modelhub"]["FF01"]["layers"][3]["params"]
    assert core["num_rbf"] == 8 and core["num_interactions"] == 2
    prov = resolved["Provenance"]
    assert prov["split_sizes"] == {"training": 6, "validation": 3, "test": 3}
    assert processed[0].name == f"processed_dataset_{prov['data_hash'][:16]}"
    assert "torch" in prov["versions"]
    # the resolved configuration is itself a valid train.yaml
    original = resolve_config(yaml.safe_load(config.read_text()))
    assert resolve_config(resolved)["Trainer"] == original["Trainer"]
    # one log with timestamps and the expected events
    (text,) = logs(workdir)
    for needle in ("data: wrote processed_dataset_", "split: drew and saved", "FF01: built SchNet",
                   "FF01 epoch 1/2: train loss", "val loss", "rmse_Fa", "epochs without improvement",
                   "FF01: test (3 structures", "FF02: inactive"):
        assert needle in text, needle
    assert text[:4].isdigit()  # timestamped lines
    history = (model_dir / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,lr,train_loss,val_loss,val_score,val_rmse_E,val_rmse_Fa")
    assert len(history) == 3
    metrics = json.loads((model_dir / "test_metrics.json").read_text())
    assert metrics["n_structures"] == 3
    assert metrics["terms"]["rmse_Fa"] == pytest.approx(metrics["force_rmse"], rel=1e-12)
    assert set(metrics["per_species"]) == {"C", "H", "O"}
    assert metrics["energy_rmse_per_atom"] == pytest.approx(metrics["energy_rmse"] / 6)
    # the best model is a standalone model file (weights only) that reproduces the test error
    model, meta = load_layer_stack(model_dir / "model_best.pt")
    assert meta["epoch"] == metrics["best_epoch"]
    torch.load(model_dir / "model_last.pt", weights_only=True)


def test_rerun_reuses_data_and_split_and_never_warm_starts(workdir):
    config = write_config(workdir)
    assert main(["train", "-c", str(config), "-o", "out"]) == 0
    split_file = next((workdir / "out").glob("processed_dataset_*/split_*.json"))
    before = (split_file.stat().st_mtime_ns, split_file.read_text())
    last = workdir / "out" / MODEL_DIR / "model_last.pt"
    last_bytes = last.read_bytes()
    assert main(["train", "-c", str(config), "-o", "out"]) == 2  # refused
    second = logs(workdir)[-1]
    assert "never continues training silently" in second and "--resume" in second
    assert (split_file.stat().st_mtime_ns, split_file.read_text()) == before
    assert last.read_bytes() == last_bytes  # nothing touched
    # --force starts over
    assert main(["train", "-c", str(config), "-o", "out", "--force"]) == 0
    third = logs(workdir)[-1]
    assert "data: reusing processed_dataset_" in third and "split: reused split_" in third
    assert "--force: removed the previous" in third


def test_resume_guard_names_changes(workdir):
    assert main(["train", "-c", str(write_config(workdir)), "-o", "out"]) == 0
    changed = write_config(workdir, name="changed.yaml", Trainer__learning_rate=0.002,
                           Trainer__max_epochs=3)
    from nnpflow.training.session import run_train

    with pytest.raises(ResumeMismatchError) as info:
        run_train(changed, "out", resume=True)
    assert "Trainer.learning_rate: 0.001 -> 0.002" in str(info.value)
    assert "max_epochs" not in str(info.value)  # a --resume may train longer
    # forced: resumes with the new settings and trains the third epoch
    run_train(changed, "out", resume=True, force=True)
    history = (workdir / "out" / MODEL_DIR / "history.csv").read_text().splitlines()
    assert len(history) == 4
    # a changed data file is named too
    make_dataset(workdir, seed=1)
    with pytest.raises(ResumeMismatchError, match="processed data hash"):
        run_train(changed, "out", resume=True)


def test_resume_without_checkpoint_is_an_error(workdir):
    assert main(["train", "-c", str(write_config(workdir)), "-o", "out", "--resume"]) == 2


def resolved_datahub(folder, **changes):
    config = copy.deepcopy(CONFIG)
    config["Datahub"].update(changes)
    return resolve_config(config, folder)["Datahub"]


def test_data_hash_covers_content_mapping_transforms_and_split_key_covers_seed(workdir):
    base = datahub_hash(resolved_datahub(workdir))
    assert datahub_hash(resolved_datahub(workdir)) == base  # stable
    variants = [
        resolved_datahub(workdir, targets={"E": "energy"}),
        resolved_datahub(workdir, transforms={"atomic_energy": None, "negative_gradient": True}),
        resolved_datahub(workdir, transforms={"atomic_energy": "atomic_energy.csv",
                                              "negative_gradient": False}),
        resolved_datahub(workdir, compression=False),
    ]
    hashes = {datahub_hash(v) for v in variants}
    assert base not in hashes and len(hashes) == len(variants)
    # same path, other content: data file and reference energies
    (workdir / "atomic_energy.csv").write_text("atom_type,atomic_energy\nH,-0.1\nC,-0.2\nO,-0.4\n")
    after_csv = datahub_hash(resolved_datahub(workdir))
    assert after_csv != base
    make_dataset(workdir, seed=5)
    assert datahub_hash(resolved_datahub(workdir)) not in (base, after_csv)
    # a copy of the data under another name hashes the same
    (workdir / "copy.pkl").write_bytes((workdir / "dataset.pkl").read_bytes())
    assert (datahub_hash(resolved_datahub(workdir, data_path="copy.pkl"))
            == datahub_hash(resolved_datahub(workdir)))
    splitter = resolve_config(CONFIG, workdir)["Trainer"]["Splitter"]
    key = split_key(base, splitter)
    assert split_key(base, {**splitter, "seed": 4}) != key
    assert split_key(base, {**splitter, "ratios": [0.5, 0.5, 0.0]}) != key
    assert split_key(after_csv, splitter) != key


@pytest.mark.parametrize("changes, message", [
    ({"Datahub__max_memry": 10}, "Datahub.max_memry: unknown key (did you mean 'max_memory'?)"),
    ({"Trainer__Splitter__ratio": [0.5]},
     "Trainer.Splitter.ratio: unknown key (did you mean 'ratios'?)"),
    ({"Trainer__lerning_rate": 0.1},
     "Trainer.lerning_rate: unknown key (did you mean 'learning_rate'?)"),
    ({"Modelhub__FF01__pretrain_pth": "x"},
     "Modelhub.FF01.pretrain_pth: unknown key for architecture SchNet (did you mean "
     "'pretrain_path'?)"),
    ({"Modelhub__FF01__build_params__cutof_sr": 3},
     "Modelhub.FF01.build_params.cutof_sr: no layer takes"),
    ({"Metrics__rmse__Xa": 1}, "Metrics.rmse.Xa: unknown field"),
    ({"Datahub__transforms__total_energy_normalization": True},
     "Datahub.transforms.total_energy_normalization: true is not supported"),
    ({"Trainer__schedule_params__factor": 0.5},
     "Trainer.schedule_params.factor: not a parameter of schedule 'linear'"),
    ({"Modelhub__FF01__loss__rmse__M2": 1}, "Modelhub.FF01.loss: the model does not predict M2"),
    ({"Trainer__dtype": "float16"}, "Trainer.dtype: 'float16' is not one of float32, float64"),
    ({"Trainer__Splitter__ratios": [0.5, None, None]}, "at most one part may take the remainder"),
])
def test_config_errors_name_the_key_path(workdir, changes, message, capsys):
    config = write_config(workdir, **changes)
    with pytest.raises(ConfigError) as info:
        resolve_config(yaml.safe_load(config.read_text()), workdir)
    assert message in str(info.value)
    assert main(["train", "-c", str(config), "-o", "out"]) == 2
    assert message in capsys.readouterr().err
    assert not (workdir / "out").exists()  # nothing written for a bad configuration


# ---------------------------------------------------------- SIGTERM, resume
RUNNER = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from nnpflow.training.interrupt import GracefulInterrupt, TrainingInterrupted
    from nnpflow.training.session import run_train
    kill_at = (tuple(int(v) for v in sys.argv[3].split(","))
               if len(sys.argv) > 3 and not sys.argv[3].startswith("--") else None)
    def on_step(epoch, step):
        if (epoch, step) == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)   # a real signal, handled like SLURM's
    with GracefulInterrupt() as stop:
        try:
            run_train(sys.argv[1], sys.argv[2], resume="--resume" in sys.argv, interrupt=stop,
                      on_step=on_step)
        except TrainingInterrupted as exc:
            print(exc, file=sys.stderr)
            sys.exit(exc.exit_status)
""")


def run_python(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def final_state(folder: Path) -> dict:
    state = torch.load(folder / MODEL_DIR / "model_last.pt", weights_only=True)
    best = torch.load(folder / MODEL_DIR / "model_best.pt", weights_only=True)
    history = [{k: v for k, v in row.items() if k != "time_s"} for row in state["history"]]
    return {"weights": state["model"]["state_dict"], "best": best["state_dict"],
            "ema": state["ema"]["shadow"], "optimizer": state["optimizer"]["state"],
            "history": history,
            "test": json.loads((folder / MODEL_DIR / "test_metrics.json").read_text())}


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(workdir):
    config = write_config(workdir, Trainer__max_epochs=3, Trainer__warmup_ratio=0.3,
                          Trainer__dtype="float64")
    from nnpflow.training.session import run_train

    run_train(config, "straight")  # uninterrupted, in this process
    stopped = run_python([str(config), "split", "1,1"], workdir)  # SIGTERM at epoch 2, step 2
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "stopped by SIGTERM at epoch 2, step 2/2" in stopped.stderr and "--resume" in stopped.stderr
    state = torch.load(workdir / "split" / MODEL_DIR / "model_last.pt", weights_only=True)
    assert state["progress"]["epoch"] == 1 and state["progress"]["step_in_epoch"] == 2
    assert not (workdir / "split" / MODEL_DIR / "test_metrics.json").exists()
    run_train(config, "split", resume=True)
    a, b = final_state(workdir / "straight"), final_state(workdir / "split")
    assert a["history"] == b["history"] and a["test"] == b["test"]
    for key in ("weights", "best", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for k, v in a["optimizer"].items():
        for name in v:
            assert torch.equal(v[name], b["optimizer"][k][name])


def test_cli_sigterm_from_outside_writes_checkpoint(workdir):
    config = write_config(workdir, Trainer__max_epochs=400, Trainer__patience=None)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nnpflow.cli", "train", "-c", str(config),
                             "-o", "out", "--threads", "1"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    log_dir = workdir / "out" / "logs"
    while time.time() < deadline:
        texts = [p.read_text() for p in log_dir.glob("*.log")] if log_dir.exists() else []
        if any("FF01 epoch 2/400" in t for t in texts):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    state = torch.load(workdir / "out" / MODEL_DIR / "model_last.pt", weights_only=True)
    assert state["progress"]["epoch"] >= 2 and not state["progress"]["finished"]


def copper_cells(n: int, seed: int = 0):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    return frames


def periodic_config(data_path: str, data_format: str) -> dict:
    config = copy.deepcopy(CONFIG)
    config["Datahub"] = {"data_path": data_path, "data_format": data_format}
    config["Modelhub"] = {"FF01": {**CONFIG["Modelhub"]["FF01"],
                                   "build_params": {"dim_embedding": 8, "num_rbf": 6, "max_Za": 30,
                                                    "cutoff_sr": 3.0}}}
    config["Modelhub"]["FF01"]["layers"][3]["params"] = {"num_interactions": 1, "hidden_channels": 8}
    config["Trainer"]["max_epochs"] = 1
    return config


@pytest.mark.parametrize("data_format", ["extxyz", "xsf", "hdf5"])
def test_periodic_cells_from_extxyz_xsf_and_database(workdir, data_format):
    import ase.io

    frames = copper_cells(8)
    if data_format == "extxyz":
        ase.io.write(workdir / "cells.extxyz", frames, format="extxyz")
        path = "cells.extxyz"
    elif data_format == "xsf":
        from nnpflow import Structure
        from nnpflow.io.xsf import write_xsf

        write_xsf(workdir / "cells.xsf", [Structure.from_ase(a) for a in frames], animate=True)
        path = "cells.xsf"
    else:
        from nnpflow import Structure
        from nnpflow.database import write_database

        write_database(workdir / "cells.h5", [Structure.from_ase(a) for a in frames])
        path = "cells.h5"
    config = write_config(workdir, periodic_config(path, data_format))
    assert main(["train", "-c", str(config), "-o", "out"]) == 0
    metrics = json.loads((workdir / "out" / MODEL_DIR / "test_metrics.json").read_text())
    assert metrics["n_structures"] == 2 and set(metrics["per_species"]) == {"Cu"}
    text = logs(workdir)[-1]
    assert "pair lists for 8 structures" in text and "targets E, Fa" in text


def test_npz_data_gives_the_same_processed_structures_as_pickle(workdir):
    with open(workdir / "dataset.pkl", "rb") as fh:
        data = pickle.load(fh)
    np.savez(workdir / "dataset.npz", **data)
    from nnpflow.training.datahub import prepare_data

    pkl = prepare_data(resolved_datahub(workdir), workdir / "a")
    npz = prepare_data(resolved_datahub(workdir, data_path="dataset.npz", data_format="npz"),
                       workdir / "b")
    assert pkl.hash != npz.hash  # other file content and format
    a, b = pkl.structures(), npz.structures()
    assert len(a) == len(b) == 12
    for s, t in zip(a, b):
        assert s.content_hash() == t.content_hash()
    # negative_gradient and atomic_energy were applied: forces are -gradient, energies referenced
    np.testing.assert_allclose(a[0].forces, -data["gradient"][0])
    assert a[0].energy == pytest.approx(data["energy"][0] - (-0.2 - 0.3 - 4 * 0.1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_device_is_a_clear_error(workdir, capsys):
    config = write_config(workdir, Trainer__cuda=True)
    assert main(["train", "-c", str(config), "-o", "out"]) == 2
    assert "Trainer.cuda is true but torch" in capsys.readouterr().err
    assert not (workdir / "out").exists()


# ---------------------------------------------------------------- issue 13 (part A)

def _folder_state(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` except the logs: modification time and content."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and "logs" not in p.parts}


@pytest.mark.parametrize("how", ["changed", "changed-data", "resume-changed",
                                 "resume-changed-data", "resume-missing"])
def test_a_refused_run_changes_nothing_but_its_log(workdir, how):
    """A refused ``nnpflow train`` (results present without --resume; --resume with
    changed settings or data; --resume of another model without a checkpoint) leaves
    every file in DIR as it was, config.yaml and the data cache included; it only
    adds its log."""
    assert main(["train", "-c", str(write_config(workdir)), "-o", "out"]) == 0
    before = _folder_state(workdir / "out")
    n_logs = len(logs(workdir))
    if how.endswith("changed-data"):
        make_dataset(workdir, seed=5)  # another data file: another processed data set
    changes = {"Trainer__learning_rate": 0.002} if how.endswith("changed") else {}
    if how == "resume-missing":
        changes = {"Modelhub__FF02__active": True}
    changed = write_config(workdir, name="changed.yaml", **changes)
    args = ["train", "-c", str(changed), "-o", "out"] + (["--resume"]
                                                          if how.startswith("resume") else [])
    assert main(args) == 2
    assert _folder_state(workdir / "out") == before
    assert len(logs(workdir)) == n_logs + 1
    refusal = logs(workdir)[-1]
    assert ("never continues training silently" in refusal or "cannot resume" in refusal
            or "nothing to resume" in refusal), refusal


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_resume_with_more_epochs_continues_training(workdir, schedule):
    """--resume with a larger max_epochs trains the extra epochs (the workflow's train
    stage does the same) instead of being refused; nothing else may change."""
    assert main(["train", "-c", str(write_config(workdir, Trainer__schedule=schedule)),
                 "-o", "out"]) == 0
    longer = write_config(workdir, name="longer.yaml", Trainer__schedule=schedule,
                          Trainer__max_epochs=4)
    assert main(["train", "-c", str(longer), "-o", "out", "--resume"]) == 0
    text = logs(workdir)[-1]
    assert "max_epochs 2 -> 4: training continues to epoch 4" in text, text
    assert "FF01 epoch 3/4" in text and "FF01 epoch 4/4" in text and "epoch 1/4" not in text
    rows = (workdir / "out" / MODEL_DIR / "history.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4]
    lrs = [float(r.split(",")[1]) for r in rows]
    assert all(lr > 0 for lr in lrs)          # the stretched schedule stays positive
    if schedule == "constant":
        assert lrs == [0.001] * 4


def test_constant_schedule_does_not_warm_up_unless_asked(workdir):
    config = copy.deepcopy(CONFIG)
    del config["Trainer"]["warmup_ratio"]       # the default
    config["Trainer"]["schedule"] = "constant"
    assert main(["train", "-c", str(write_config(workdir, config)), "-o", "out"]) == 0
    rows = (workdir / "out" / MODEL_DIR / "history.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[1]) for r in rows] == [0.001, 0.001]
    resolved = yaml.safe_load((workdir / "out" / "config.yaml").read_text())
    assert resolved["Trainer"]["warmup_ratio"] == 0.0
    # asked for: it warms up
    config["Trainer"]["warmup_ratio"] = 0.5
    assert main(["train", "-c", str(write_config(workdir, config)), "-o", "out2"]) == 0
    rows = (workdir / "out2" / MODEL_DIR / "history.csv").read_text().splitlines()[1:]
    assert float(rows[0].split(",")[1]) < 0.001


ANN_CONFIG = {**CONFIG, "Modelhub": {"FF03": {
    "architecture": "ANN", "hidden": [[4, "tanh"]],
    "descriptor": {"rad_order": 3, "rad_cutoff": 4.0, "ang_order": 1, "ang_cutoff": 3.0},
    "loss": {"rmse": {"E": 1, "Fa": 1}}}}}


@pytest.mark.parametrize("how", ["resume-changed", "resume-changed-data"])
def test_a_refused_ann_resume_changes_nothing_but_its_log(workdir, how):
    """The ANN resume guard needs the processed structures: a refusal there takes
    back the data folder and split this run made; config.yaml stays as it was."""
    assert main(["train", "-c", str(write_config(workdir, ANN_CONFIG)), "-o", "out"]) == 0
    before = _folder_state(workdir / "out")
    if how == "resume-changed-data":
        make_dataset(workdir, seed=5)
    changes = {"Trainer__learning_rate": 0.002} if how == "resume-changed" else {}
    changed = write_config(workdir, ANN_CONFIG, name="changed.yaml", **changes)
    assert main(["train", "-c", str(changed), "-o", "out", "--resume"]) == 2
    assert "cannot resume" in logs(workdir)[-1]
    assert _folder_state(workdir / "out") == before
    # a larger max_epochs alone continues
    longer = write_config(workdir, ANN_CONFIG, name="longer.yaml", Trainer__max_epochs=3)
    if how == "resume-changed-data":
        make_dataset(workdir, seed=0)
    assert main(["train", "-c", str(longer), "-o", "out", "--resume"]) == 0
    rows = (workdir / "out" / "FF03-ANN" / "history.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3]


def _train_with_slow_data(config: str, folder: str) -> None:
    """``nnpflow train`` in a forked child whose data reader takes 1 s per structure."""
    import nnpflow.training.datahub as datahub
    original = datahub.read_source

    def slow(hub):
        for s in original(hub):
            time.sleep(1.0)
            yield s
    datahub.read_source = slow
    os.chdir(folder)
    os._exit(main(["train", "-c", config, "-o", "out", "--threads", "1"]))


def test_sigterm_while_processing_the_data_stops_within_seconds(workdir):
    """SIGTERM during data processing (before the first training step) takes effect
    at once: exit status 143 within seconds, a message saying nothing was trained,
    and no processed data folder (its temporary folder is removed)."""
    import multiprocessing as mp
    config = write_config(workdir)
    proc = mp.get_context("fork").Process(target=_train_with_slow_data,
                                          args=(str(config), str(workdir)))
    proc.start()
    deadline = time.time() + 60
    log_dir = workdir / "out" / "logs"
    while time.time() < deadline:
        texts = [p.read_text() for p in log_dir.glob("*.log")] if log_dir.exists() else []
        if any("data: processing" in t for t in texts):
            break
        time.sleep(0.05)
    time.sleep(0.5)  # inside the reader
    start = time.time()
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(30)
    took = time.time() - start
    if proc.exitcode is None:  # pragma: no cover - a hang is a failure
        proc.kill()
        proc.join()
    assert proc.exitcode == 128 + signal.SIGTERM
    assert took < 5, f"SIGTERM took {took:.1f} s to stop the data processing"
    text = logs(workdir)[-1]
    assert "stopped by SIGTERM while checking and processing the data set" in text, text
    assert list((workdir / "out").glob("*processed_dataset_*")) == []
