"""train.yaml files in Enerzyme's shipped style (tests/data/train_yaml/) train end to end
with ``nnpflow train``, and each Enerzyme key does what docs/train-yaml.md says (issue 15).

The data sets the files name are written here: small molecules and periodic copper cells
labelled with ASE's EMT calculator, so every run takes seconds."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nnpflow.cli import main
from nnpflow.errors import ConfigError
from nnpflow.models.model_file import load_layer_stack
from nnpflow.training.yaml_config import load_config, resolve_config

CORPUS = Path(__file__).resolve().parent / "data" / "train_yaml"
REFERENCES = {"H": -13.6, "C": -1030.0, "O": -2040.0}


# ------------------------------------------------------------------ data sets
def _emt(atoms):
    from ase.calculators.emt import EMT

    atoms.calc = EMT()
    return atoms.get_potential_energy(), atoms.get_forces()


def write_molecules(folder: Path, n_frames: int = 10, seed: int = 0) -> list[dict]:
    """A list of frames (Enerzyme's pickle layout): methanol and water, element symbols
    as atom types, gradients instead of forces, no N and no Q field."""
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_frames):
        atoms = molecule("CH3OH" if k % 2 == 0 else "H2O")
        atoms.positions += rng.normal(0, 0.06, atoms.positions.shape)
        energy, forces = _emt(atoms)
        frames.append({"coord": atoms.positions.copy(),
                       "atom_type": list(atoms.get_chemical_symbols()),
                       "energy": energy + sum(REFERENCES[s] for s in atoms.get_chemical_symbols()),
                       "grad": -forces})
    with open(folder / "molecules.pkl", "wb") as fh:
        pickle.dump(frames, fh)
    (folder / "atomic_energy.csv").write_text(
        "atom_type,atomic_energy\n" + "".join(f"{s},{e}\n" for s, e in REFERENCES.items()))
    return frames


def write_charged(folder: Path, n_frames: int = 10, seed: int = 1) -> dict:
    """Enerzyme's dict layout as npz: frames of 5 or 6 atoms padded to 6 (N given),
    total charge, atomic charges, dipoles."""
    rng = np.random.default_rng(seed)
    n = np.array([6 if k % 2 else 5 for k in range(n_frames)])
    xyz = np.zeros((n_frames, 6, 3))
    z = np.zeros((n_frames, 6), dtype=np.int64)
    for k in range(n_frames):
        xyz[k, :n[k]] = rng.uniform(0, 2.0, (n[k], 3)) + np.arange(n[k])[:, None] * 1.1
        z[k, :n[k]] = [6, 1, 1, 8, 1, 1][:n[k]]
    data = {"n_atoms": n, "xyz": xyz, "z": z, "total_chrg": (np.arange(n_frames) % 3 - 1.0),
            "energy": rng.normal(size=n_frames), "forces": rng.normal(size=(n_frames, 6, 3)),
            "chrg": rng.normal(0, 0.2, (n_frames, 6)), "dipole": rng.normal(size=(n_frames, 3))}
    np.savez(folder / "charged.npz", **data)
    return data


def write_cells(folder: Path, n_frames: int = 8, seed: int = 0) -> None:
    import ase.io
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        _emt(atoms)
        frames.append(atoms)
    ase.io.write(folder / "cells.extxyz", frames, format="extxyz")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    write_molecules(tmp_path)
    write_charged(tmp_path)
    write_cells(tmp_path)
    for path in CORPUS.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def log_text(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((out / "logs").glob("train-*.log")))


def edited(folder: Path, name: str, new_name: str, edit) -> Path:
    config = yaml.safe_load((folder / name).read_text())
    edit(config)
    (folder / new_name).write_text(yaml.safe_dump(config, sort_keys=False))
    return folder / new_name


def test_the_corpus_covers_every_key_it_claims():
    """Each Enerzyme key the issue lists appears in some file of the corpus."""
    text = "\n".join(p.read_text() for p in CORPUS.glob("*.yaml"))
    for key in ("Metric:", "Metrics:", "internal_FFs:", "external_FFs:", "compressed:",
                "neighbor_list:", "max_memory:", "total_energy_normalization:", "pretrain_path:",
                "use_ema:", "ema_decay:", "ema_use_num_updates:", "resume:", "otf_graph:",
                "non_target_features:", "inference_batch_size:", "max_norm:", "weight_decay:",
                "amsgrad:", "data_in_memory:", "Monitor:", "suffix:", "mae:", "mse:", "rmse:",
                "cuton:", "activation_fn:", "activation_params:", "cutoff_fn:", "cutoff_lr:",
                "flavor:", "shifts:", "scales:", "learnable:", "values:"):
        assert key in text, key


# ---------------------------------------------------------- the corpus trains
def test_molecules_in_enerzymes_shipped_style(workdir):
    assert main(["train", "-c", "molecules.yaml", "-o", "out"]) == 0
    out = workdir / "out"
    model_dir = out / "FF02-SchNet"  # blank suffix: none
    for name in ("model_best.pt", "model_last.pt", "history.csv", "test_metrics.json"):
        assert (model_dir / name).is_file(), name
    assert not list(out.glob("FF01-*")) and not list(out.glob("FF04-*"))  # inactive
    # the model's own Metric (not the top-level one) is the validation score
    header = (model_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_rmse_E", "val_rmse_Fa", "val_mae_Fa"} <= set(header)
    metrics = json.loads((model_dir / "test_metrics.json").read_text())
    assert set(metrics["terms"]) == {"rmse_E", "rmse_Fa", "mae_Fa"}
    assert metrics["score"] == pytest.approx(metrics["terms"]["rmse_E"]
                                             + 10 * metrics["terms"]["rmse_Fa"]
                                             + metrics["terms"]["mae_Fa"])
    # element symbols became atomic numbers; N inferred; Q: null and absent -> 0
    from nnpflow.database import DatabaseReader

    frames = pickle.loads((workdir / "molecules.pkl").read_bytes())
    (dataset,) = out.glob("processed_dataset_*/dataset.h5")
    with DatabaseReader(dataset) as reader:
        structures = list(reader.iter_structures())
    assert [len(s) for s in structures] == [len(f["atom_type"]) for f in frames]
    assert [list(s.species) for s in structures] == [f["atom_type"] for f in frames]
    assert all(s.total_charge == 0.0 for s in structures)
    # transforms: references subtracted, gradients flipped
    first = frames[0]
    assert structures[0].energy == pytest.approx(
        first["energy"] - sum(REFERENCES[s] for s in first["atom_type"]))
    np.testing.assert_allclose(structures[0].forces, -first["grad"])
    # keys accepted without effect are logged once, with why; max_norm -1: no clipping
    text = log_text(out)
    for key in ("Datahub.neighbor_list", "Datahub.max_memory", "Trainer.otf_graph",
                "Trainer.data_in_memory", "Trainer.Monitor"):
        assert text.count(f"accepted without effect: {key}") == 1, key
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["Trainer"]["max_grad_norm"] is None and "max_norm" not in resolved["Trainer"]
    assert resolved["Metrics"] == {"rmse": {"E": 1.0, "Fa": 52.917721}}
    assert resolved["Modelhub"]["FF01"]["architecture"] == "PhysNet"  # kept as written
    # the written configuration is itself a valid train.yaml
    again = resolve_config(resolved, workdir)
    assert again["Trainer"] == load_config(workdir / "molecules.yaml", workdir)["Trainer"]


def test_charged_frames_in_the_flat_form_with_the_tutorials_metrics(workdir):
    assert main(["train", "-c", "charged_flat.yaml", "-o", "out"]) == 0
    model_dir = workdir / "out" / "FF01-SchNet"
    metrics = json.loads((model_dir / "test_metrics.json").read_text())
    assert set(metrics["terms"]) == {"rmse_E", "rmse_Fa", "rmse_Qa", "rmse_M2", "rmse_Q"}
    model, _ = load_layer_stack(model_dir / "model_best.pt")
    assert model.outputs == ["E", "Fa", "Qa", "Q", "M2"]
    text = log_text(workdir / "out")
    assert "Trainer.resume 2: no " in text  # nothing saved yet: a new training
    # ema_use_num_updates: false: the average has the constant decay from the first update
    state = torch.load(model_dir / "model_last.pt", weights_only=True)
    assert state["ema"]["warmup"] is False and state["ema"]["decay"] == 0.99


def test_periodic_cells(workdir):
    assert main(["train", "-c", "cells.yaml", "-o", "out"]) == 0
    model_dir = workdir / "out" / "FF01-SchNet-cells"
    metrics = json.loads((model_dir / "test_metrics.json").read_text())
    assert metrics["n_structures"] == 2 and set(metrics["per_species"]) == {"Cu"}
    assert set(metrics["terms"]) == {"mae_E", "rmse_Fa"}  # Metric, field first
    state = torch.load(model_dir / "model_last.pt", weights_only=True)
    assert state["ema"] is None  # use_ema: false


def test_layer_params_of_enerzymes_schnet_examples(workdir):
    assert main(["train", "-c", "layer_params.yaml", "-o", "out"]) == 0
    model, _ = load_layer_stack(workdir / "out" / "FF_SchNet-SchNet" / "model_best.pt")
    assert model.outputs == ["E", "Fa", "Qa", "Q", "M2"]


# ------------------------------------------------------------ fine-tuning
def _pretrained(workdir) -> Path:
    assert main(["train", "-c", "molecules.yaml", "-o", "pretrained"]) == 0
    return workdir / "pretrained" / "FF02-SchNet"


def _tiny_rate(config):
    config["Trainer"]["learning_rate"] = 1e-12
    config["Trainer"]["warmup_ratio"] = 0.0


def test_pretrain_path_starts_from_the_saved_averaged_weights(workdir):
    saved = _pretrained(workdir)
    best = torch.load(saved / "model_best.pt", weights_only=True)["state_dict"]
    # the model is built with the pretrained weights ...
    from nnpflow.training.modelhub import build_model, initial_weights

    entry = load_config(workdir / "finetune.yaml", workdir)["Modelhub"]["FF02"]
    assert entry["pretrain_path"] == str(saved)
    start = initial_weights(entry, entry["pretrain_path"], "Modelhub.FF02", averaged=True)
    assert start["source"] == str(saved / "model_best.pt")
    model = build_model({**entry, "initial_weights": start}, "Modelhub.FF02")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, best[k], rtol=0, atol=0)
    # ... and training continues from them: with a vanishing rate it stays there,
    tiny = edited(workdir, "finetune.yaml", "tiny.yaml", _tiny_rate)
    assert main(["train", "-c", str(tiny), "-o", "ft"]) == 0
    tuned = torch.load(workdir / "ft" / "FF02-SchNet-finetuned" / "model_best.pt",
                       weights_only=True)["state_dict"]
    for k, v in best.items():
        torch.testing.assert_close(tuned[k], v, rtol=0, atol=1e-6)
    assert "starts from the averaged weights of" in log_text(workdir / "ft")
    # while the same run without pretrain_path starts elsewhere (random weights)
    scratch = edited(workdir, "tiny.yaml", "scratch.yaml",
                     lambda c: c["Modelhub"]["internal_FFs"]["FF02"].pop("pretrain_path"))
    assert main(["train", "-c", str(scratch), "-o", "scratch"]) == 0
    fresh = torch.load(workdir / "scratch" / "FF02-SchNet-finetuned" / "model_best.pt",
                       weights_only=True)["state_dict"]
    assert max(float((fresh[k] - v).abs().max()) for k, v in best.items()) > 1e-2
    # with a real rate the fine-tuned weights move on from the pretrained ones
    assert main(["train", "-c", "finetune.yaml", "-o", "ft2"]) == 0
    moved = torch.load(workdir / "ft2" / "FF02-SchNet-finetuned" / "model_best.pt",
                       weights_only=True)["state_dict"]
    diff = max(float((moved[k] - v).abs().max()) for k, v in best.items())
    assert 0 < diff < max(float((fresh[k] - v).abs().max()) for k, v in best.items())


def test_pretrain_path_of_another_architecture_is_refused_before_any_data(workdir):
    _pretrained(workdir)

    def wider(config):
        config["Modelhub"]["internal_FFs"]["FF02"]["layers"][3]["params"]["hidden_channels"] = 8
    other = edited(workdir, "finetune.yaml", "other.yaml", wider)
    with pytest.raises(ConfigError, match=r"Modelhub\.FF02: the saved model .*model_best\.pt is "
                                          r"not of this model's architecture \(.*has weights of "
                                          r"other shapes: layers\.4\.filter_w1 \(1, 8, 16\) vs "
                                          r"\(1, 8, 8\)"):
        from nnpflow.training.session import run_train
        run_train(other, "out")
    assert not list((workdir / "out").glob("processed_dataset_*"))  # nothing processed

    def fewer(config):
        config["Modelhub"]["internal_FFs"]["FF02"]["layers"].pop(4)  # no AtomicAffine
    assert main(["train", "-c", str(edited(workdir, "finetune.yaml", "f.yaml", fewer)),
                 "-o", "out"]) == 2
    assert "not of this model's architecture (layers" in log_text(workdir / "out")

    def missing(config):
        config["Modelhub"]["internal_FFs"]["FF02"]["pretrain_path"] = "nowhere"
    assert main(["train", "-c", str(edited(workdir, "finetune.yaml", "m.yaml", missing)),
                 "-o", "out"]) == 2
    assert "nowhere does not exist" in log_text(workdir / "out")


def test_resume_1_starts_a_new_training_from_the_saved_live_weights(workdir):
    saved = _pretrained(workdir)
    last = torch.load(saved / "model_last.pt", weights_only=True)
    live = last["model"]["state_dict"]

    def again(config):
        _tiny_rate(config)
        config["Trainer"]["resume"] = 1
        config["Trainer"]["max_epochs"] = 1
    config = edited(workdir, "molecules.yaml", "again.yaml", again)
    assert main(["train", "-c", str(config), "-o", "pretrained"]) == 0
    text = log_text(workdir / "pretrained")
    assert "starts from the saved weights of" in text and "are replaced" in text
    state = torch.load(saved / "model_last.pt", weights_only=True)
    assert len(state["history"]) == 1  # a new training: epoch count from 0
    for k, v in live.items():
        torch.testing.assert_close(state["model"]["state_dict"][k], v, rtol=0, atol=1e-6)


def test_resume_2_continues_the_saved_training_guarded(workdir):
    _pretrained(workdir)  # 2 epochs
    def longer(config):
        config["Trainer"]["resume"] = 2
        config["Trainer"]["max_epochs"] = 3
    config = edited(workdir, "molecules.yaml", "longer.yaml", longer)
    assert main(["train", "-c", str(config), "-o", "pretrained"]) == 0
    state = torch.load(workdir / "pretrained" / "FF02-SchNet" / "model_last.pt",
                       weights_only=True)
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert "Trainer.resume 2: continuing the training saved in" in log_text(
        workdir / "pretrained")
    # a changed setting is refused as with --resume
    changed = edited(workdir, "longer.yaml", "changed.yaml",
                     lambda c: c["Trainer"].update(learning_rate=0.002))
    assert main(["train", "-c", str(changed), "-o", "pretrained"]) == 2
    assert "Trainer.learning_rate: 0.001 -> 0.002" in log_text(workdir / "pretrained")


def test_resume_0_never_continues_silently(workdir):
    _pretrained(workdir)
    assert main(["train", "-c", "molecules.yaml", "-o", "pretrained"]) == 2
    assert "never continues training silently" in log_text(workdir / "pretrained")


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("arch", ["PhysNet", "SpookyNet", "LEFTNet", "AlphaNet", "MACE",
                                  "NequIP"])
def test_an_active_model_of_an_unsupported_architecture_is_refused_first(workdir, arch, capsys):
    def activate(config):
        hub = config["Modelhub"]
        group = "external_FFs" if arch in ("MACE", "NequIP") else "internal_FFs"
        hub.setdefault(group, {})["FFX"] = {"architecture": arch, "active": True,
                                            "loss": {"rmse": {"E": 1}}}
    config = edited(workdir, "molecules.yaml", "bad.yaml", activate)
    assert main(["train", "-c", str(config), "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert (f"FFX.architecture: {arch} is an Enerzyme architecture that nnpflow does not "
            "implement; supported: ANN, SchNet") in err
    assert not (workdir / "out").exists()  # refused before anything is read or written


def test_all_active_unsupported_models_are_named_in_one_error(workdir):
    """Enerzyme's shipped train.yaml activates SpookyNet, LEFTNet, MACE, NequIP, XPaiNN."""
    def activate(config):
        hub = config["Modelhub"]
        hub["internal_FFs"]["FF01"]["active"] = True                       # PhysNet
        hub["external_FFs"]["FF04"]["active"] = True                       # MACE
    config = edited(workdir, "molecules.yaml", "shipped.yaml", activate)
    with pytest.raises(ConfigError) as info:
        load_config(config, workdir)
    assert ("Modelhub: active models of Enerzyme architectures that nnpflow does not "
            "implement: Modelhub.internal_FFs.FF01 (PhysNet), Modelhub.external_FFs.FF04 "
            "(MACE); supported: ANN, SchNet") in str(info.value)


@pytest.mark.parametrize("changes, message", [
    ({"Trainer": {"amsgrad": 1}}, "Trainer.amsgrad: expected true or false, got 1"),
    ({"Trainer": {"weight_decay": -0.01}}, "Trainer.weight_decay: must be >= 0.0"),
    ({"Trainer": {"optimizer": "Muon"}}, "Trainer.optimizer: 'Muon' is not supported; "
                                         "nnpflow trains with Adam or AdamW"),
    ({"Trainer": {"betas": [0.9]}}, "Trainer.betas: expected two numbers"),
    ({"Trainer": {"Optimizer": {"name": "Adam", "amsgrad": True}}},
     "give amsgrad either in Trainer or in Trainer.Optimizer, not both"),
    ({"Trainer": {"resume": 3}}, "Trainer.resume: expected 0"),
    ({"Trainer": {"max_norm": 1.0, "max_grad_norm": 1.0}}, "either max_grad_norm or its alias"),
    ({"Trainer": {"use_emma": True}}, "Trainer.use_emma: unknown key (did you mean 'use_ema'?)"),
    ({"Datahub": {"neighbor_list": "radius"}}, "Datahub.neighbor_list: 'radius' is not 'full'"),
    ({"Datahub": {"max_memory": -1}}, "Datahub.max_memory: must be > 0.0"),
    ({"Metrics": {"rmse": {"E": 1}}}, "either Metrics or Enerzyme's spelling Metric"),
    ({"Metric": {"E": {"rmse": 1}, "mae": {"Fa": 1}}}, "Metric: mixes metric kinds (mae)"),
    ({"Metric": {"E": {"rmsd": 1}}}, "Metric.E.rmsd: unknown metric"),
    ({"Metric": {"E": {"rmse": -1}}}, "Metric.E.rmse: weight must be finite and >= 0"),
    ({"Modelhub": {"internal_FFs": {"FF02": {"architecture": "SchNett"}}}},
     "unknown architecture 'SchNett' (did you mean 'SchNet'?)"),
])
def test_refusals_name_the_key(workdir, changes, message):
    def apply(config):
        for section, values in changes.items():
            node = config.setdefault(section, {})
            if section == "Modelhub":
                node["internal_FFs"]["FF02"].update(values["internal_FFs"]["FF02"])
            elif section == "Metric":
                config["Metric"] = values
            else:
                node.update(values)
    config = edited(workdir, "molecules.yaml", "bad.yaml", apply)
    with pytest.raises(ConfigError) as info:
        load_config(config, workdir)
    assert message in str(info.value)


@pytest.mark.parametrize("form", ["flat", "Optimizer"])
def test_enerzymes_optimizer_keys_reach_the_torch_optimizer(workdir, form):
    """optimizer/betas/eps/weight_decay/amsgrad (flat, or Enerzyme's Trainer.Optimizer
    block with name) build torch's AdamW with those hyper-parameters."""
    keys = {"betas": [0.85, 0.99], "eps": 1e-6, "weight_decay": 1e-4, "amsgrad": True}

    def apply(config):
        trainer = config["Trainer"]
        for key in ("weight_decay", "amsgrad"):
            trainer.pop(key, None)
        if form == "flat":
            trainer.update(optimizer="AdamW", **keys)
        else:
            trainer["Optimizer"] = {"name": "AdamW", **keys}
    config = edited(workdir, "molecules.yaml", "adamw.yaml", apply)
    assert main(["train", "-c", str(config), "-o", "out"]) == 0
    state = torch.load(workdir / "out" / "FF02-SchNet" / "model_last.pt", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert group["betas"] == (0.85, 0.99) or list(group["betas"]) == [0.85, 0.99]
    assert (group["eps"], group["weight_decay"], group["amsgrad"]) == (1e-6, 1e-4, True)
    assert "decoupled_weight_decay" not in group or group["decoupled_weight_decay"]
    # the resolved configuration keeps Enerzyme's flat spelling
    resolved = yaml.safe_load((workdir / "out" / "config.yaml").read_text())["Trainer"]
    assert (resolved["optimizer"], resolved["amsgrad"]) == ("AdamW", True)


def test_the_default_optimizer_adds_nothing_to_a_runs_identity():
    """Adam without AMSGrad (the default, also when written out) leaves the loop's
    Trainer mapping, a checkpoint's identity, as it was before these keys existed."""
    from nnpflow.training.yaml_config import loop_trainer, resolve_trainer

    plain = loop_trainer(resolve_trainer({}))
    written = loop_trainer(resolve_trainer({"optimizer": "Adam", "amsgrad": False, "eps": 1e-8,
                                            "weight_decay": 0, "betas": [0.9, 0.999]}))
    assert plain == written and "optimizer" not in plain
    ams = loop_trainer(resolve_trainer({"amsgrad": True}))
    assert (ams["optimizer"], ams["optimizer_params"]) == ("adam", {"amsgrad": True})


def test_both_metric_forms_give_the_same_table():
    from nnpflow.training.losses import parse_metric_table

    a = parse_metric_table({"E": {"rmse": 1}, "Fa": {"rmse": 52.9, "mae": 2}}, "Metric")
    b = parse_metric_table({"rmse": {"E": 1, "Fa": 52.9}, "mae": {"Fa": 2}}, "Metrics")
    assert a == b == {"rmse": {"E": 1.0, "Fa": 52.9}, "mae": {"Fa": 2.0}}


def test_inference_batch_size_sets_validation_and_test_batches(workdir, monkeypatch):
    import importlib
    import sys

    from nnpflow.training import message_passing

    sizes = []
    original = message_passing.chunks

    def spy(indices, size):
        sizes.append((len(indices), size))
        return original(indices, size)
    # every training module that splits index arrays into batches with chunks()
    for name in ("nnpflow.training.message_passing", "nnpflow.training.loop"):
        try:
            module = sys.modules.get(name) or importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "chunks"):
            monkeypatch.setattr(module, "chunks", spy)
    assert main(["train", "-c", "molecules.yaml", "-o", "out"]) == 0
    # training batches of 4 over 6 structures; validation and test (2 each) in batches of 3
    assert (6, 4) in sizes and (2, 3) in sizes and not any(n == 2 and s == 4 for n, s in sizes)


def test_ema_use_num_updates_is_the_warm_up_ramp():
    from torch import nn

    from nnpflow.training.ema import ExponentialMovingAverage, warmup_decay

    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 10) == pytest.approx(11 / 20)
    assert warmup_decay(0.5, 10) == 0.5
    for warmup, d1 in ((True, 0.1), (False, 0.9)):
        layer = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            layer.weight.fill_(0.0)
        ema = ExponentialMovingAverage(layer, decay=0.9, warmup=warmup)
        with torch.no_grad():
            layer.weight.fill_(1.0)
        ema.update()  # shadow = d1 * 0 + (1 - d1) * 1
        assert float(ema.shadow["weight"]) == pytest.approx(1 - d1)


def test_settings_translation_of_the_enerzyme_keys(workdir):
    from nnpflow.training.settings import TrainingSettings
    from nnpflow.training.yaml_config import LOOP_KEYS, loop_trainer, resolve_trainer

    trainer = resolve_trainer({"use_ema": False, "ema_decay": 0.999, "inference_batch_size": 7,
                               "max_norm": 2.5})
    s = TrainingSettings.from_trainer(loop_trainer(trainer))  # what the loops read
    assert (s.ema_decay, s.inference_batch_size, s.max_grad_norm) == (0.0, 7, 2.5)
    loop = loop_trainer(trainer)
    assert loop["ema_decay"] is None and loop["inference_batch_size"] == 7
    warm = resolve_trainer({"schedule": "constant_with_warmup"})
    assert (warm["schedule"], warm["warmup_ratio"]) == ("constant", 0.01)
    s = TrainingSettings.from_trainer(loop_trainer(resolve_trainer({"ema_use_num_updates": False})))
    assert s.ema_warmup is False and s.layer_stack_trainer(False)["ema_use_num_updates"] is False
    # the defaults add nothing to the loop's mapping: checkpoints keep their identity
    default = loop_trainer(resolve_trainer({}))
    assert "ema_use_num_updates" not in default and "inference_batch_size" not in default
    assert tuple(default) == LOOP_KEYS


# ------------------------------------------------------------ the tutorial
#: the tutorial's configuration (spec: enerzyme-training.txt), verbatim; its Trainer keys
#: are printed flush left there, and are nested under Trainer here as the text intends
TUTORIAL = """
Datahub:
    data_path: "dataset.pkl"
    data_format: "pickle"
    features:
        N: "number_of_atoms"
        Ra: "coordinates"
        Za: "atomic_numbers"
        Q: "total_charge"
    targets:
        E: "energy"
        Fa: "forces"
        Qa: "atomic_charges"
        M2: "dipole"
    compression: true
    preload: true
    transforms:
        atomic_energy: "atomic_energy.csv"
        negative_gradient: true
Modelhub:
    FF01:
        suffix:
        architecture: SchNet
        active: true
        build_params:
            dim_embedding: 128
            num_rbf: 128
            max_Za: 94
            cutoff_sr: 5.0
            Hartree_in_E: 1
            Bohr_in_R: 0.5291772108
        layers:
          - name: RangeSeparation
          - name: GaussianSmearing
          - name: RandomAtomEmbedding
          - name: Core
            params:
                num_interactions: 4
                hidden_channels: 128
          - name: AtomicAffine
          - name: ChargeConservation
          - name: AtomicCharge2Dipole
          - name: ElectrostaticEnergy
          - name: EnergyReduce
          - name: Force
        loss:
            rmse:
                Fa: 52.917721
                Qa: 1
                E: 1
                M2: 1.8897261
                Q: 1
Trainer:
    Splitter:
        method: random
        parts:
        - training
        - validation
        - test
        preload: true
        ratios:
        - 0.7
        - 0.1
        - 0.2
        save: true
        seed: 42
    batch_size: 64
    cuda: true
    dtype: float32
    schedule: linear
    learning_rate: 0.001
    max_epochs: 10000
    num_workers: 10
    patience: 50
    seed: 42
    warmup_ratio: 0.001
Metrics:
    rmse:
        E: 1
        Fa: 52.917721
        Qa: 1
        M2: 1.8897261
        Q: 1
"""


def write_tutorial_data(folder: Path, n_frames: int = 10, seed: int = 2) -> None:
    """The tutorial's fields: frames padded to 6 atoms, raw gradients, charges, dipoles."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_frames):
        n = 5 if k % 2 else 6
        pos = np.zeros((6, 3))
        pos[:n] = rng.uniform(0, 2.0, (n, 3)) + np.arange(n)[:, None] * 1.2
        frames.append({"number_of_atoms": n, "coordinates": pos,
                       "atomic_numbers": np.array([6, 1, 1, 8, 1, 1]),
                       "total_charge": float(k % 3 - 1), "energy": float(rng.normal()),
                       "forces": rng.normal(size=(6, 3)),
                       "atomic_charges": rng.normal(0, 0.2, 6), "dipole": rng.normal(size=3)})
    with open(folder / "dataset.pkl", "wb") as fh:
        pickle.dump(frames, fh)
    (folder / "atomic_energy.csv").write_text("atom_type,atomic_energy\nH,-0.5\nC,-37.8\n"
                                              "O,-75.0\n")


def test_the_tutorials_configuration_verbatim(tmp_path, monkeypatch):
    """Accepted exactly as written; trained with only what needs a GPU cluster changed
    (cuda, 10 loader processes, 10,000 epochs)."""
    write_tutorial_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(TUTORIAL)
    config = resolve_config(raw, tmp_path)
    t = config["Trainer"]
    assert (t["batch_size"], t["cuda"], t["max_epochs"], t["num_workers"], t["patience"],
            t["warmup_ratio"], t["Splitter"]["ratios"]) == (64, True, 10000, 10, 50, 0.001,
                                                            [0.7, 0.1, 0.2])
    assert config["Modelhub"]["FF01"]["layers"][3]["params"]["num_interactions"] == 4
    raw["Trainer"].update(cuda=False, num_workers=0, max_epochs=1)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["train", "-c", "train.yaml", "-o", "."]) == 0
    metrics = json.loads((tmp_path / "FF01-SchNet" / "test_metrics.json").read_text())
    assert metrics["n_structures"] == 2
    assert set(metrics["terms"]) == {"rmse_E", "rmse_Fa", "rmse_Qa", "rmse_M2", "rmse_Q"}
    assert (tmp_path / "config.yaml").exists() and list((tmp_path / "logs").glob("train-*.log"))
    model, _ = load_layer_stack(tmp_path / "FF01-SchNet" / "model_best.pt")
    assert model.outputs == ["E", "Fa", "Qa", "Q", "M2"]  # charges, total charge, dipole
