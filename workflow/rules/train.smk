# rule train: one committee member of one model from the merged database and the split
# (nnpflow.stages.train).  Wildcards: model (a name under models:) and member
# (0 .. committee - 1; member m trains with seed training.seed + m on the shared split).
#
# params hold exactly what the member's result depends on: the model block (without
# active/committee), the training block with the model's overrides merged, and the code
# fingerprint.  So a changed learning rate retrains that model only, and a larger
# committee trains the new members only.
# training.devices > 1 starts that many data-parallel processes inside the job (one
# torch thread each): the job's threads are `devices`, and with device: cuda it asks for
# `devices` GPUs (SLURM: --gpus).
# Checkpoints go to checkpoints/ next to model.pt and are not outputs: Snakemake removes
# the outputs of a failed or killed job (SLURM time limit, preemption), and the rerun
# resumes from the last checkpoint when settings, data and code are unchanged.


rule train:
    input:
        database=database_outputs()["database"],
        split=split_output(),
    output:
        **model_outputs("{model}", "{member}"),
    params:
        stage="train",
        code=stage_code("train"),
        code_version=stage_code("train"),
        model_name=lambda wildcards: wildcards.model,
        model_cfg=lambda wildcards: model_block(wildcards.model),
        training_cfg=lambda wildcards: model_training(wildcards.model),
        member=lambda wildcards: int(wildcards.member),
    threads: lambda wildcards: training_threads(wildcards.model)
    resources:
        **job_resources("train"),
        gpu=lambda wildcards: training_gpus(wildcards.model),
    log:
        log_file("train", "{model}", "member_{member}.log"),
    benchmark:
        benchmark_file("train", "{model}", "member_{member}.tsv")
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"
