"""Issue 13: configuration mistakes stop the run at validation, with one line naming
the key -- NaN/inf settings, min_cutoff not below the cutoffs, unknown element
symbols, more training processes than cores, results at / or inside a source
folder -- and a user's ``--configfile`` does not inherit the example's models.

The checks themselves (:mod:`nnpflow.config_checks`) are tested directly; one
dry run per wiring shows the workflow runs them before planning any job.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from nnpflow.config_checks import check_workflow_config, nonfinite_paths
from nnpflow.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
NAN, INF = float("nan"), float("inf")


def shipped() -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(cfg, str(SCHEMA))
    return cfg


def changed(path: str, value) -> dict:
    cfg = shipped()
    node = cfg
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    validate(cfg, str(SCHEMA))  # the schema lets every one of these through
    return cfg


@pytest.mark.parametrize("path, value", [
    ("training.learning_rate", NAN), ("training.force_weight", NAN),
    ("training.ema_decay", NAN), ("training.learning_rate", INF),
    ("atomic_energies.Cu", NAN), ("atomic_energies.Au", -INF), ("max_energy", NAN),
    ("descriptor.rad_cutoff", INF), ("example.archive_fraction", NAN),
    ("split.validation", NAN), ("models.ann.training", {"learning_rate": NAN}),
])
def test_nan_and_inf_settings_are_refused_naming_the_key(path, value):
    cfg = changed(path, value)
    key = re.escape(path + (".learning_rate" if isinstance(value, dict) else ""))
    with pytest.raises(ConfigError, match=rf"^{key}: -?(nan|inf) is not a finite number"):
        check_workflow_config(cfg)


def test_strings_are_not_numbers():
    # issue 17's atomic_energies: fit, and YAML's 1e-3 (a string) are no NaN
    assert list(nonfinite_paths({"atomic_energies": "fit", "lr": "1e-3", "x": [1.0, True]})) == []
    assert list(nonfinite_paths({"a": [{"b": NAN}]})) == [("a[0].b", NAN)]


@pytest.mark.parametrize("path, value, message", [
    ("descriptor.min_cutoff", 5.0,
     r"^descriptor\.min_cutoff: 5\.0 Å must be below descriptor\.rad_cutoff \(5\.0 Å\)"),
    ("descriptor.min_cutoff", 4.0,
     r"^descriptor\.min_cutoff: 4\.0 Å must be below descriptor\.ang_cutoff \(3\.5 Å\)"),
    ("species", ["Cu", "Xx"], r"^species\[1\]: 'Xx' is not a chemical element symbol"),
    ("atomic_energies", {"Qq": -1.0}, r"^atomic_energies\.Qq: 'Qq' is not a chemical element"),
    ("results", "/", r"^results: '/' is the file system root"),
])
def test_late_or_vague_failures_are_one_clear_message(path, value, message):
    with pytest.raises(ConfigError, match=message):
        check_workflow_config(changed(path, value))


def test_devices_larger_than_the_cores(tmp_path):
    cfg = changed("training.devices", 4)
    with pytest.raises(ConfigError, match=r"^training\.devices: 4 training processes \(model "
                                          r"ann\) need 4 cores, but Snakemake may use 2"):
        check_workflow_config(cfg, cores=2)
    check_workflow_config(cfg, cores=4)
    check_workflow_config(cfg)  # cores unknown (a job re-reading the Snakefile)
    cfg["models"]["ann"]["training"] = {"devices": 3}
    with pytest.raises(ConfigError, match=r"^models\.ann\.training\.devices: 3 training"):
        check_workflow_config(cfg, cores=2)
    cfg["models"]["ann"]["active"] = False
    check_workflow_config(cfg, cores=2)


@pytest.mark.parametrize("source", ["data", "data/", "data/**/*.xsf", "./data"])
def test_results_inside_a_source_folder(tmp_path, source):
    (tmp_path / "data" / "run").mkdir(parents=True)
    cfg = changed("sources", [{"path": source}])
    cfg["results"] = "data/run"
    with pytest.raises(ConfigError, match=r"^results: the results folder 'data/run' is inside "
                                          r"the folder 'data' that source entry 1 "
                                          + re.escape(f"({source})")):
        check_workflow_config(cfg, base_dir=tmp_path)
    cfg["results"] = "results"  # beside the data: fine
    check_workflow_config(cfg, base_dir=tmp_path)
    cfg["sources"] = [{"path": "data/one.xsf"}]
    cfg["results"] = "data"  # a single file's folder is not read as a whole
    check_workflow_config(cfg, base_dir=tmp_path)


def test_shipped_config_passes():
    check_workflow_config(shipped(), cores=2)


def test_train_yaml_refuses_nan_settings_naming_the_key():
    from nnpflow.training.config import TorchTrainingConfig
    from nnpflow.training.yaml_config import resolve_trainer

    for key in ("learning_rate", "warmup_ratio", "ema_decay", "max_grad_norm"):
        with pytest.raises(ConfigError, match=rf"^Trainer\.{key}: nan is not a finite number"):
            resolve_trainer({key: NAN})
    with pytest.raises(ConfigError, match=r"^Trainer\.learning_rate: nan is not a finite"):
        resolve_trainer({"learning_rate": "nan"})  # YAML reads 1e-3 as a string; so "nan"
    with pytest.raises(ConfigError, match=r"schedule_params\.factor: must be finite"):
        TorchTrainingConfig(schedule="plateau", schedule_params={"factor": NAN})
    for field in ("force_weight", "ema_decay", "max_energy"):
        with pytest.raises(ConfigError, match=rf"^{field}: must be finite"):
            TorchTrainingConfig(**{field: NAN})
    with pytest.raises(ConfigError, match=r"atomic_energies\['Cu'\]: must be finite"):
        TorchTrainingConfig(atomic_energies={"Cu": INF})


def test_train_yaml_nan_anywhere_names_its_path(tmp_path):
    from nnpflow.training.yaml_config import load_config

    path = tmp_path / "train.yaml"
    path.write_text("Datahub: {data_path: d.pkl, data_format: pickle}\n"
                    "Modelhub: {FF01: {architecture: SchNet, loss: {rmse: {E: .nan}}}}\n")
    with pytest.raises(ConfigError, match=r"train\.yaml: Modelhub\.FF01\.loss\.rmse\.E: nan is "
                                          r"not a finite number"):
        load_config(path, base_dir=tmp_path)


# ------------------------------------------------------------ the workflow

def dry_run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", *args], cwd=folder,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.workflow
def test_workflow_stops_before_planning_naming_the_key(tmp_path, copy_workflow):
    cfg = copy_workflow(tmp_path, ("Snakefile", "workflow", "config"))
    cases = {
        "training:\n  learning_rate: .nan\n":
            "invalid configuration at training.learning_rate: nan is not a finite number",
        "training:\n  devices: 3\n":
            "invalid configuration at training.devices: 3 training processes (model ann) "
            "need 3 cores, but Snakemake may use 2",
        "results: data/out\nsources: [{path: data}]\n":
            "invalid configuration at results: the results folder 'data/out' is inside the "
            "folder 'data' that source entry 1 (data) reads",
    }
    (tmp_path / "data").mkdir()
    for n, (text, message) in enumerate(cases.items()):
        (tmp_path / f"bad{n}.yaml").write_text(text)
        proc = dry_run(tmp_path, "--cores", "2", "--configfile", f"bad{n}.yaml")
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and message in out, out[-3000:]
        assert "Traceback" not in out, out[-3000:]


@pytest.mark.workflow
def test_user_configfile_does_not_inherit_the_example_models(tmp_path, copy_workflow):
    copy_workflow(tmp_path, ("Snakefile", "workflow", "config"))
    (tmp_path / "my.yaml").write_text(
        "models:\n  mine:\n    architecture: ann\n    hidden: [[8, tanh]]\n"
        "training:\n  epochs: 3\n")
    proc = dry_run(tmp_path, "--cores", "1", "--configfile", "my.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "results/models/mine/member_0/model.pt" in out, out[-3000:]
    assert "models/ann/" not in out, out[-3000:]
    # without models in the user's file, the bundled model is the default, and other
    # blocks still merge key by key (training.epochs above came from my.yaml)
    (tmp_path / "other.yaml").write_text("training:\n  epochs: 3\n")
    proc = dry_run(tmp_path, "--cores", "1", "--configfile", "other.yaml")
    assert proc.returncode == 0 and "results/models/ann/member_0/model.pt" in proc.stdout
