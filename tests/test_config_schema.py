"""The configuration schema: defaults, rejection of unknown keys, documentation.

Validation uses Snakemake's own ``snakemake.utils.validate`` (the function the
Snakefile calls), so defaults and errors are exactly those a workflow run sees.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def filled(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    validate(cfg, str(SCHEMA))
    return cfg


def error_of(cfg: dict) -> str:
    with pytest.raises(WorkflowError) as info:
        validate(copy.deepcopy(cfg), str(SCHEMA))
    return str(info.value)


def test_defaults_are_filled():
    cfg = filled({})
    assert cfg["results"] == "results"
    # the schema's example defaults are the example generator's own
    from nnpflow.example import DEFAULTS
    assert cfg["example"] == DEFAULTS
    assert cfg["sources"] == [] and cfg["species"] is None and cfg["atomic_energies"] == {}
    assert cfg["max_energy"] is None and cfg["on_error"] == "raise"
    assert cfg["descriptor"] == {"rad_order": 10, "rad_cutoff": 6.0, "ang_order": 3,
                                 "ang_cutoff": 4.0, "min_cutoff": 0.55}
    assert cfg["database"] == {"shards": 4, "persist_features": True,
                               "persist_force_derivatives": True,
                               "compression": "gzip", "dtype": "float32", "threads": 1}
    assert cfg["split"] == {"validation": 0.1, "test": 0.1, "seed": 42, "method": "stable"}
    assert cfg["models"] == {"ann": {"architecture": "ann", "active": True, "committee": 1,
                                     "hidden": [[16, "tanh"], [16, "tanh"]]}}
    assert set(cfg["training"]) == {"epochs", "batch_size", "learning_rate", "schedule",
                                    "force_weight", "force_fraction", "force_sampling",
                                    "patience", "ema_decay", "device", "devices", "seed"}
    assert cfg["training"]["device"] == "auto" and cfg["training"]["devices"] == 1
    assert cfg["evaluate"] == {"splits": ["train", "validation", "test"], "plots": True,
                               "physical_checks": {
                                   "structures": 3, "steps": 200, "timestep": 0.5,
                                   "temperature": 300, "seed": 0, "min_distance_limit": 0.5,
                                   "max_force_limit": 50}}


def test_partial_blocks_keep_given_values_and_fill_the_rest():
    cfg = filled({"descriptor": {"rad_cutoff": 5.0},
                  "models": {"big": {"architecture": "ann", "hidden": [[32, "tanh"]],
                                     "training": {"learning_rate": 0.01}}}})
    assert cfg["descriptor"]["rad_cutoff"] == 5.0 and cfg["descriptor"]["rad_order"] == 10
    # per-model defaults are filled too; a model's training block is an override only
    assert cfg["models"] == {"big": {"architecture": "ann", "hidden": [[32, "tanh"]],
                                     "active": True, "committee": 1,
                                     "training": {"learning_rate": 0.01}}}


@pytest.mark.parametrize("cfg, key", [
    ({"resluts": "x"}, "'resluts' was unexpected"),
    ({"descriptor": {"rad_ordr": 4}}, "'rad_ordr' was unexpected"),
    ({"database": {"shard": 2}}, "'shard' was unexpected"),
    ({"training": {"lr": 0.1}}, "'lr' was unexpected"),
    ({"models": {"m": {"architecture": "ann", "hidden": [[4, "tanh"]],
                       "training": {"epoch": 3}}}}, "'epoch' was unexpected"),
    ({"sources": [{"path": "a.xsf", "fromat": "xsf"}]}, "'fromat' was unexpected"),
    ({"example": {"enable": False}}, "'enable' was unexpected"),
    ({"evaluate": {"plot": False}}, "'plot' was unexpected"),
])
def test_unknown_keys_are_rejected_by_name(cfg, key):
    assert key in error_of(cfg)


@pytest.mark.parametrize("cfg, message", [
    ({"on_error": "ignore"}, "'ignore' is not one of ['raise', 'skip']"),
    ({"database": {"shards": 0}}, "0 is less than the minimum of 1"),
    ({"split": {"test": 1.5}}, "1.5 is not valid under any of the given schemas"),
    ({"split": {"validation": -0.1}}, "-0.1 is not valid under any of the given schemas"),
    ({"species": ["Cu", "copper"]}, "'copper' does not match"),
    ({"models": {"m": {"architecture": "ann"}}}, "'hidden' is a required property"),
    ({"models": {"m": {"architecture": "ann", "hidden": [[8, "tanhh"]]}}}, "'tanhh' is not one of"),
    ({"models": {"m": {"architecture": "schnet", "build_params": {},
                       "layers": [{"name": "Core"}], "hidden": [[8, "tanh"]]}}},
     "hidden belongs to ann models"),
    ({"models": {"bad name": {"architecture": "ann", "hidden": [[8, "tanh"]]}}},
     "'bad name' does not match"),
    ({"training": {"device": "gpu"}}, "'gpu' is not one of ['auto', 'cpu', 'cuda']"),
    ({"atomic_energies": "fitted"}, "'fitted' is not valid under any of the given schemas"),
    ({"split": {"method": "random"}}, "'random' is not one of ['stable', 'permutation']"),
    ({"evaluate": {"physical_checks": {"steps": 0}}}, "0 is less than the minimum of 1"),
])
def test_invalid_values_are_rejected(cfg, message):
    text = error_of(cfg)
    assert message in text or message in text.replace('"', "'")


def test_split_sizes_accept_fractions_and_counts():
    assert filled({"split": {"validation": 0.25, "test": 7}})["split"]["test"] == 7


def test_atomic_energies_take_a_table_or_fit():
    assert filled({"atomic_energies": "fit"})["atomic_energies"] == "fit"
    assert filled({"atomic_energies": {"Cu": -0.5}})["atomic_energies"] == {"Cu": -0.5}


@pytest.mark.workflow
def test_fitted_references_and_max_energy_are_refused(tmp_path, copy_workflow):
    copy_workflow(tmp_path, ("Snakefile", "workflow", "config"))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config",
         "atomic_energies=fit", "max_energy=1.0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("invalid configuration at max_energy: atomic_energies: fit cannot be combined "
            "with max_energy") in out, out[-3000:]


def test_shipped_config_is_valid():
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    filled(cfg)


def _schema_keys(node, found=None):
    """Every property name the schema defines, at any depth."""
    found = set() if found is None else found
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            if isinstance(sub, dict) and sub.get("not") == {}:
                continue  # "this key is not allowed here" entries
            found.add(name)
        for value in node.values():
            _schema_keys(value, found)
    elif isinstance(node, list):
        for value in node:
            _schema_keys(value, found)
    return found


def test_every_schema_key_is_documented():
    schema = yaml.safe_load(SCHEMA.read_text())
    readme = (REPO / "config" / "README.md").read_text()
    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", readme))
    missing = sorted(_schema_keys(schema) - documented)
    assert not missing, f"config/README.md does not document {missing}"


@pytest.mark.workflow
@pytest.mark.parametrize("override, message", [
    ("descriptor={'rad_cutof': 5.0}",
     "invalid configuration at descriptor: Additional properties are not allowed "
     "('rad_cutof' was unexpected)"),
    ("sources=[{'path': 'no/such/folder'}]",
     "invalid configuration at sources: source entry 1 (no/such/folder): "
     "'no/such/folder' does not exist"),
])
def test_snakemake_names_the_bad_key(tmp_path, override, message, copy_workflow):
    """A bad configuration stops the run before planning, naming the key and its place."""
    copy_workflow(tmp_path, ("Snakefile", "workflow", "config"))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", override],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in out, out[-3000:]


def test_job_resources_have_defaults_per_rule_and_partial_overrides():
    cfg = filled({"resources": {"train": {"runtime": 2880}}})
    assert cfg["resources"]["train"] == {"mem_mb": 8000, "runtime": 2880}
    assert cfg["resources"]["split"] == {"mem_mb": 1000, "runtime": 10}
    assert "'memory' was unexpected" in error_of({"resources": {"train": {"memory": 1}}})
    assert "'trian' was unexpected" in error_of({"resources": {"trian": {}}})
    assert "0 is less than the minimum of 1" in error_of(
        {"resources": {"build": {"mem_mb": 0}}})


def test_resources_are_set_in_one_place():
    """Every rule takes mem_mb and runtime from the config's resources block (one
    entry per rule, no literal values in the rules), and the SLURM profile sets
    neither, so that local and cluster runs cannot disagree."""
    rules = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for match in re.finditer(r"(?m)^\s*(?:rule|checkpoint) (\w+):", text):
            end = re.compile(r"(?m)^\s*(?:rule|checkpoint) \w+:").search(text, match.end())
            rules[match.group(1)] = text[match.end(): end.start() if end else len(text)]
    schema = yaml.safe_load(SCHEMA.read_text())
    per_rule = set(schema["properties"]["resources"]["properties"])
    assert per_rule == set(rules) - {"all"}
    for name, body in rules.items():
        assert "mem_mb=" not in body and "runtime=" not in body, name
        if name != "all":
            assert f'**job_resources("{name}")' in body, name
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    for where in [profile.get("default-resources") or {},
                  *(profile.get("set-resources") or {}).values()]:
        assert not {"mem_mb", "mem", "runtime", "time"} & set(where), where
    assert "set-threads" not in profile  # the rules' threads: are the one source
