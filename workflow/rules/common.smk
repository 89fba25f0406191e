# Helpers shared by the files under workflow/rules -- the configuration's validation (schema
# workflow/schemas/config.schema.yaml, which fills the defaults), paths, the source
# plan, shard planning, per-rule params and resources.  No rules here (snakemake
# --lint wants functions and rules in separate files).
#
# Rerunning only what changed rests on two things done here:
# * every rule's params carry exactly the config its stage reads, in a canonical
#   form (sorted keys, so reordering config.yaml changes nothing), plus
#   code_fingerprint("nnpflow.stages.<stage>"), the hash of the stage module and
#   every nnpflow module it imports (Snakemake does not see those edits otherwise);
# * sources are planned at DAG-construction time: a plain file belongs to shard
#   shard_of(path, shards) and is an input of that shard's jobs only, so adding
#   one file changes one shard's inputs; an archive is an input of every shard
#   (each shard keeps the members that hash to it).


import posixpath
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from nnpflow.errors import ConfigError
from nnpflow.example import example_files
from nnpflow.io import detect_format
from nnpflow.provenance import code_fingerprint
from nnpflow.sharding import shard_of
from nnpflow.sources import SourceSpec, expand_sources

#: the rule environment for --sdm conda (path relative to this folder)
CONDA_ENV = "../../envs/nnpflow.yaml"


def _validate_config():
    """Validate and fill ``config``; re-raise schema errors as one clear line."""
    import jsonschema

    try:
        validate(config, "../schemas/config.schema.yaml")  # relative to this file
    except WorkflowError as exc:
        err = exc.__context__  # snakemake raises from inside its `except ValidationError`
        if not isinstance(err, jsonschema.ValidationError):
            raise
        err = jsonschema.exceptions.best_match([err, *err.context]) if err.context else err
        where = posixpath.join(*map(str, err.absolute_path)) if err.absolute_path else "(top level)"
        what = err.message
        if err.validator == "not" and err.schema.get("description"):
            what = err.schema["description"]
        raise WorkflowError(f"invalid configuration at {where}: {what} "
                            f"(see config/README.md)") from None


_validate_config()


def _check_config():
    """The checks the schema cannot express (nnpflow.config_checks): NaN/inf numbers,
    min_cutoff, element symbols, devices against the cores, the results folder."""
    from nnpflow.config_checks import check_workflow_config

    cores = None
    if workflow.is_main_process:  # jobs re-read the Snakefile with their own --cores
        if workflow.local_exec:
            cores = workflow._cores if isinstance(workflow._cores, int) else None
        else:
            cores = workflow.resource_settings.max_threads
    try:
        check_workflow_config(config, cores=cores)
    except ConfigError as exc:
        raise WorkflowError(f"invalid configuration at {exc} (see config/README.md)") from None


_check_config()

RESULTS = str(config["results"]).rstrip(posixpath.sep) or "."
N_SHARDS = int(config["database"]["shards"])
SHARDS = list(range(N_SHARDS))


wildcard_constraints:
    shard=r"\d+",


def results(*parts):
    """Path under the results folder: results("manifest", "manifest.tsv")."""
    return "/".join([RESULTS, *parts])


def log_file(*parts):
    """The log file of a job, under {results}/logs/."""
    return results("logs", *parts)


def benchmark_file(*parts):
    """The benchmark file of a job, under {results}/benchmarks/."""
    return results("benchmarks", *parts)


def canonical(obj):
    """``obj`` with dict keys sorted at every level and tuples as lists.

    Snakemake compares params by ``repr``; a canonical form makes the comparison
    independent of the key order in config.yaml.
    """
    if isinstance(obj, dict):
        return {str(k): canonical(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    return obj


#: nnpflow modules a stage imports (through nnpflow.database's lazy imports) but never
#: runs, left out of its code fingerprint: ingest writes raw databases without a
#: descriptor and manifest only hashes, so editing the descriptor code must not make
#: every ingest job read all sources again.
NOT_RUN = {
    "ingest": ("nnpflow.descriptors", "nnpflow.database.featurize"),
    "manifest": ("nnpflow.descriptors", "nnpflow.database.featurize"),
    "species": ("nnpflow.descriptors", "nnpflow.database.featurize"),
}


def stage_code(stage):
    """Fingerprint of nnpflow.stages.<stage>, everything it imports and the stage
    adapter (nnpflow.stages) that calls it (less the modules in NOT_RUN[stage])."""
    return code_fingerprint(f"nnpflow.stages.{stage}", "nnpflow.stages",
                            exclude=NOT_RUN.get(stage, ()))


def job_resources(rule):
    """Memory (mem_mb, MB) and wall time (runtime, minutes) of the jobs of ``rule``:
    config["resources"][rule], whose defaults are in the schema -- the one place
    they are set (the SLURM profile only names the partition and account)."""
    return dict(config["resources"][rule])


# ---------------------------------------------------------------- sources

EXAMPLE_ENABLED = bool(config["example"]["enabled"])

#: the example's files (outputs of rule example), as paths under {results}/example/
EXAMPLE_FILES = (
    [results("example", rel) for rel in example_files(config["example"])]
    if EXAMPLE_ENABLED
    else []
)


def _plan_sources():
    """Concrete sources: the config's entries expanded now, plus the example files.

    Paths stay relative to the working folder (Snakemake's --directory), as the
    user wrote them: they are the structures' source labels and decide the shards.
    """
    try:
        specs = list(expand_sources(config["sources"], base_dir="."))
    except ConfigError as exc:
        raise WorkflowError(f"invalid configuration at sources: {exc}") from None
    # the example files do not exist yet (the example rule makes them), so no expansion
    specs += [SourceSpec(path=p, format=detect_format(p)) for p in EXAMPLE_FILES]
    seen = {}
    for spec in specs:
        if spec.path in seen:
            raise WorkflowError(
                f"source {spec.path} is listed twice in the configuration "
                f"(sources: and/or the example); list each file once"
            )
        seen[spec.path] = spec
    if not specs:
        raise WorkflowError(
            "no sources: the configuration lists no existing files under sources: "
            "and the example is disabled (example: {enabled: true} runs the bundled example)"
        )
    return specs


SOURCES = _plan_sources()


def shard_sources(shard):
    """The sources shard ``shard`` reads: its plain files and every archive."""
    shard = int(shard)
    return [s for s in SOURCES if s.is_archive or shard_of(s.path, N_SHARDS) == shard]


def ingest_inputs(wildcards):
    """Files shard ``wildcards.shard`` reads (sources and atomic_energy tables)."""
    files = []
    for spec in shard_sources(wildcards.shard):
        files += [f for f in spec.input_files() if f not in files]
    return files


def ingest_specs(wildcards):
    return [canonical(s.to_dict()) for s in shard_sources(wildcards.shard)]


#: atomic_energies: fit -- references fitted on the training part by the split stage
FIT_ATOMIC_ENERGIES = config["atomic_energies"] == "fit"
if FIT_ATOMIC_ENERGIES and config["max_energy"] is not None:
    raise WorkflowError(
        "invalid configuration at max_energy: atomic_energies: fit cannot be combined with "
        "max_energy (the filter runs before the split the references are fitted on); give "
        "atomic_energies explicitly or set max_energy: null (see config/README.md)"
    )


def filter_settings():
    """The structure filter (max_energy eV/atom, atomic_energies eV): applied by
    ingest, part of the structures fingerprint the manifest stage computes.  With
    atomic_energies: fit nothing is referenced before the split (no references)."""
    return canonical(
        dict(
            atomic_energies={} if FIT_ATOMIC_ENERGIES else config["atomic_energies"],
            max_energy=config["max_energy"],
        )
    )


def ingest_settings():
    """The config the ingest stage depends on (beyond its own sources)."""
    return canonical(
        dict(
            species=config["species"],
            min_cutoff=config["descriptor"]["min_cutoff"],
            on_error=config["on_error"],
            **filter_settings(),
        )
    )


# ---------------------------------------------------------------- database

#: the species of the descriptor: the config's, or None (inferred from the manifest)
SPECIES = list(config["species"]) if config["species"] else None

#: torch threads of each build job
BUILD_THREADS = int(config["database"]["threads"])

#: GPUs of each build job (SLURM `gpu` resource): one with database.device: cuda
BUILD_GPUS = 1 if config["database"].get("device") == "cuda" else 0


def descriptor_settings():
    """The descriptor block (Å) the build stage featurises with."""
    return canonical(config["descriptor"])


def database_settings():
    """What the build stage stores: the database block without the shard count
    (it shapes the DAG) and the threads (they do not change the result)."""
    return canonical(
        {k: v for k, v in config["database"].items() if k not in ("shards", "threads")}
    )


def species_file():
    """The inferred species list (species: null): one symbol a line, by atomic number."""
    return results("manifest", "species.txt")


def build_inputs(wildcards):
    """The raw shard and, only when species are inferred, the species file.

    The file is the output of checkpoint ``species``, rewritten only when the
    species change, and it is ``ancient``: that the species job runs (after any
    new file) does not by itself rerun a build.  What does is the build's
    ``species`` param (:func:`build_species`), read from the file when the job is
    planned and again, after the checkpoint, when Snakemake re-plans: a new
    species changes it for every shard and so rebuilds them all.
    """
    inputs = dict(structures=results("ingest", f"shard_{wildcards.shard}.h5"))
    if SPECIES is None:
        inputs["species_file"] = ancient(str(checkpoints.species.get().output["species"]))
    return inputs


def build_species(wildcards):
    """The species a build job featurises with: the config's, or the species file's."""
    if SPECIES is not None:
        return SPECIES
    from nnpflow.stages.species import read_species_file

    return read_species_file(checkpoints.species.get().output["species"])


# ---------------------------------------------------------------- targets


def manifest_outputs():
    """The merged manifest: one row per accepted structure, summary, rejected list."""
    return dict(
        manifest=results("manifest", "manifest.tsv"),
        summary=results("manifest", "manifest.json"),
        rejected=results("manifest", "rejected.tsv"),
    )


def database_outputs():
    """The merged training database and its JSON summary."""
    return dict(
        database=results("database", "database.h5"),
        summary=results("database", "database.json"),
    )


def split_output():
    """The training/validation/test split (indices into the manifest's order)."""
    return results("split", "split.json")


def shard_outputs():
    """The per-shard files of the ingest and build jobs (the rules' output paths)."""
    return [
        path
        for k in SHARDS
        for path in (
            results("manifest", f"shard_{k}.tsv"),
            results("manifest", f"shard_{k}.rejected.tsv"),
            results("ingest", f"shard_{k}.h5"),
            results("database", f"shard_{k}.h5"),
        )
    ]


def final_outputs():
    """Everything the default target (the all rule) asks for, that is every file the workflow keeps (the example's
    files, the shards, the merged data, the split, every member's model and history
    and every active model's evaluation), not only the last ones.

    Asking for all of them is what makes a failed or killed job's work come back:
    Snakemake removes the outputs of a job that fails, and it does not remake a
    missing file that no target asks for when the files computed from it are
    present (it treats it like a consumed temporary file).  With every file a
    target, a missing one (a failed job's, or one deleted by hand) is made again on
    the next run, and every job downstream of it reruns with it, so no evaluation,
    database or manifest outlives the files it was computed from."""
    return [
        *EXAMPLE_FILES,
        *shard_outputs(),
        *manifest_outputs().values(),
        *database_outputs().values(),
        split_output(),
        *[path for name in model_names() for kind in ("model", "history")
          for path in committee_files(name, kind)],
        *[path for name in model_names() for path in evaluation_outputs(name).values()],
        summary_output(),
    ]


# ---------------------------------------------------------------- models

wildcard_constraints:
    model=r"[A-Za-z0-9_-]+",
    member=r"\d+",


#: keys of a model block that shape the DAG but not what one member learns
#: (changing the committee size adds or removes members; it does not retrain the others)
WORKFLOW_MODEL_KEYS = ("active", "committee", "training")


def model_names():
    """Names of the active models, in config order."""
    return [name for name, m in config["models"].items() if m["active"]]


def model_members(name):
    """Committee member indices of model ``name``: 0 .. committee - 1."""
    return list(range(int(config["models"][name]["committee"])))


def model_block(name):
    """What the train stage builds model ``name`` from: its block without the keys
    that belong to the workflow (active, committee) or are passed separately
    (training: merged into model_training(name))."""
    block = config["models"][name]
    return canonical({k: v for k, v in block.items() if k not in WORKFLOW_MODEL_KEYS})


def model_training(name):
    """Effective training settings of a model: the training block, then its overrides."""
    return canonical({**config["training"], **config["models"][name].get("training", {})})


def training_threads(name):
    """Threads of one training job of model ``name``: one per process, and
    ``training.devices`` processes (data-parallel training when > 1).  Snakemake
    caps them at --cores (and, with the SLURM profile, at max-threads)."""
    return int(model_training(name)["devices"])


def training_gpus(name):
    """GPUs a training job of model ``name`` asks for (SLURM ``gpu`` resource).

    ``device: cuda`` asks for ``devices`` GPUs; ``auto`` and ``cpu`` ask for none
    (with ``auto`` the job still uses a GPU when the node it lands on has one).
    """
    settings = model_training(name)
    return int(settings["devices"]) if settings["device"] == "cuda" else 0


def model_outputs(name, member):
    """The files one training job writes (its checkpoints/ folder next to them is
    deliberately not an output: Snakemake deletes the outputs of a failed or
    killed job, and a rerun resumes from those checkpoints)."""
    folder = results("models", str(name), f"member_{member}")
    return dict(model=f"{folder}/model.pt", history=f"{folder}/history.csv")


def committee_files(name, kind):
    """The ``kind`` ("model" or "history") files of every member of model ``name``
    (for an aenet model, the one imported model file and its empty history)."""
    if is_aenet_model(name):
        return [aenet_model_outputs(name)[kind]]
    return [model_outputs(name, m)[kind] for m in model_members(name)]


def is_aenet_model(name):
    """Whether model ``name`` points at existing aenet potential files (evaluated,
    not trained)."""
    return config["models"][name]["architecture"] == "aenet"


def aenet_files(name):
    """The aenet potential files of model ``name`` (relative to the working folder)."""
    return list(config["models"][name]["files"])


def aenet_model_outputs(name):
    """What rule import_aenet writes for model ``name``."""
    folder = results("models", str(name), "aenet")
    return dict(model=f"{folder}/model.pt", history=f"{folder}/history.csv")


#: the evaluate stage's outputs that are plots (written when evaluate.plots is true)
EVALUATION_PLOTS = ("parity_energy", "parity_forces", "learning_curve")


def evaluation_outputs(name):
    """The evaluate stage's files for model ``name`` (by output name)."""
    folder = results("evaluation", str(name))
    out = dict(
        metrics=f"{folder}/metrics.json",
        per_species=f"{folder}/per_species.csv",
        worst_structures=f"{folder}/worst_structures.csv",
    )
    if config["evaluate"]["plots"]:
        out.update({plot: f"{folder}/{plot}.png" for plot in EVALUATION_PLOTS})
        if PHYSICAL_CHECKS:
            out["md_check"] = f"{folder}/md_check.png"
    return out


#: whether the evaluation runs NVE checks (evaluate.physical_checks.structures > 0)
PHYSICAL_CHECKS = int(config["evaluate"]["physical_checks"]["structures"]) > 0


def summary_output():
    """The table of every model's test errors and NVE-check verdict (report: Summary)."""
    return results("evaluation", "summary.csv")


def evaluate_settings():
    """The evaluate block the evaluate stage reads (plots only decides the outputs)."""
    return canonical({k: v for k, v in config["evaluate"].items() if k != "plots"})


# ---------------------------------------------------------------- evaluation outputs

def _evaluation_report(name, caption, label):
    """An evaluation output marked for the report, under "Evaluation" / model name."""
    return report(
        evaluation_outputs("{model}")[name],
        caption=f"../report/{caption}.rst",
        category="Evaluation",
        subcategory="{model}",
        labels={"model": "{model}", "output": label},
    )


def _evaluate_outputs():
    outputs = dict(
        metrics=_evaluation_report("metrics", "metrics", "metrics (JSON)"),
        per_species=_evaluation_report("per_species", "per_species", "errors per species"),
        worst_structures=_evaluation_report(
            "worst_structures", "worst_structures", "largest errors"
        ),
    )
    if config["evaluate"]["plots"]:
        outputs.update(
            parity_energy=_evaluation_report("parity_energy", "parity_energy", "energy parity"),
            parity_forces=_evaluation_report("parity_forces", "parity_forces", "force parity"),
            learning_curve=_evaluation_report(
                "learning_curve", "learning_curve", "learning curve"
            ),
        )
        if PHYSICAL_CHECKS:
            outputs["md_check"] = _evaluation_report("md_check", "md_check", "NVE checks")
    return outputs


def example_dir(output):
    """The folder the example rule writes into, taken from its outputs (so that it
    follows any storage prefix Snakemake puts in front of them)."""
    first = example_files(config["example"])[0]
    return str(Path(output[0]).parents[len(Path(first).parts) - 1])
