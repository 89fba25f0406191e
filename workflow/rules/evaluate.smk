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
        **job_resources("evaluate"),
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
        **job_resources("summary"),
    log:
        log_file("summary.log"),
    benchmark:
        benchmark_file("summary.tsv")
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"
