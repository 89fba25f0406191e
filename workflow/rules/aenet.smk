# rule import_aenet: a models: entry with architecture: aenet names existing aenet
# potential files (one per species) instead of training; they become an nnpflow model
# file (nnpflow.stages.import_aenet) under {results}/models/{model}/aenet/, which the
# evaluate rule takes like a trained member.  Editing a potential file reruns the
# import and the evaluation.


rule import_aenet:
    input:
        files=lambda wildcards: aenet_files(wildcards.model),
    output:
        **aenet_model_outputs("{model}"),
    params:
        stage="import_aenet",
        code=stage_code("import_aenet"),
        model_name=lambda wildcards: wildcards.model,
    threads: 1
    resources:
        **job_resources("import_aenet"),
    log:
        log_file("import_aenet", "{model}.log"),
    benchmark:
        benchmark_file("import_aenet", "{model}.tsv")
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"
