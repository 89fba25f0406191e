# rule evaluate: every committee member of one model on the evaluate.splits parts of the
# split (nnpflow.stages.evaluate -> nnpflow.evaluation): metrics.json (errors of the
# committee's mean prediction per part, the committee spread, each member's errors),
# per_species.csv, worst_structures.csv and, with evaluate.plots, energy and force
# parity plots and the learning curve; with evaluate.physical_checks, short NVE runs
# of the smallest test structures (metrics.json "physical_checks", md_check.png).
# The final artefacts go into the report (snakemake --report report.html) with the
# captions in workflow/report/.
# rule summary: every model's test errors and NVE-check verdict in one table, shown
# first in the report (category "Summary"), so a model that blew up is flagged there.


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


rule evaluate:
    input:
        database=database_outputs()["database"],
        split=split_output(),
        models=lambda wildcards: committee_files(wildcards.model, "model"),
        histories=lambda wildcards: committee_files(wildcards.model, "history"),
    output:
        **_evaluate_outputs(),
    params:
        stage="evaluate",
        code=stage_code("evaluate"),
        model_name=lambda wildcards: wildcards.model,
        **evaluate_settings(),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        log_file("evaluate", "{model}.log"),
    benchmark:
        benchmark_file("evaluate", "{model}.tsv")
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule summary:
    input:
        metrics=[evaluation_outputs(name)["metrics"] for name in model_names()],
    output:
        summary=report(
            summary_output(),
            caption="../report/summary.rst",
            category="Summary",
            labels={"output": "models"},
        ),
    params:
        stage="summary",
        code=stage_code("summary"),
        model_names=model_names(),
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    log:
        log_file("summary.log"),
    benchmark:
        benchmark_file("summary.tsv")
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"
