# rule split: training/validation/test indices from the manifest (each structure's label
# and content hash; split.method stable decides each structure's part from a seeded hash
# of them, so added files never move the others) and its summary (count and
# fingerprint): the split depends on the structures only, a descriptor or database
# change keeps it.  With atomic_energies: fit the split stage also fits the reference
# energies on the training part (stored in split.json, applied by every train job).


rule split:
    input:
        manifest_summary=manifest_outputs()["summary"],
        manifest=manifest_outputs()["manifest"],
    output:
        split=split_output(),
    params:
        stage="split",
        code=stage_code("split"),
        **canonical(config["split"]),
        fit_atomic_energies=FIT_ATOMIC_ENERGIES,
    threads: 1
    resources:
        **job_resources("split"),
    log:
        log_file("split.log"),
    benchmark:
        benchmark_file("split.tsv")
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"
