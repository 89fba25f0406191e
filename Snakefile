# nnpflow: raw atomistic reference data -> trained, evaluated interatomic potentials.
#
#   snakemake --cores 2                              # the bundled example, locally
#   snakemake --report report.html                   # the HTML report of a finished run
#   snakemake --workflow-profile profiles/slurm      # on a SLURM cluster
#   snakemake -n                                     # what would run, and why
#
# Stages, one rule file each -- example -> ingest (per shard) -> manifest -> build (per
# shard) -> merge -> split -> train (per model and committee member) -> evaluate (per
# model).
#
# The configuration is config/config.yaml (documented in config/README.md), validated
# against workflow/schemas/config.schema.yaml: unknown keys are rejected, missing
# keys get their defaults.  Each stage is one rule file under workflow/rules/ whose
# rules call one function of nnpflow.stages (see docs/architecture.md).

import copy
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# `snakemake --configfile my.yaml` merges my.yaml into config/config.yaml key by key.
# For `models:` that would add the example's models to the user's: a user's models
# replace the bundled ones instead (other blocks still merge, key by key).
if "models" in (workflow.config_settings.overwrite_config or {}):
    config["models"] = copy.deepcopy(workflow.config_settings.overwrite_config["models"])

# The rule environment envs/nnpflow.yaml (--sdm conda) pip-installs this checkout.
os.environ.setdefault("NNPFLOW_ROOT", str(workflow.basedir))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/example.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/build.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aenet.smk"
include: "workflow/rules/evaluate.smk"


localrules:
    all,


rule all:
    """The default target: the data stages' outputs and the evaluation (hence the
    training) of every active model."""
    input:
        final_outputs(),
    default_target: True
