# rule split: training/validation/test indices drawn from the manifest summary (the
# structures' count and fingerprint), so the split depends on the structures only:
# a descriptor or database change keeps it.


rule split:
    input:
        manifest_summary=manifest_outputs()["summary"],
    output:
        split=split_output(),
    params:
        stage="split",
        code=stage_code("split"),
        **canonical(config["split"]),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    log:
        log_file("split.log"),
    benchmark:
        benchmark_file("split.tsv")
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"
