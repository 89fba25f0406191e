# rule example: generate the bundled example data set (ASE EMT Cu/Au/Pt cells, some
# as XSF files, some packed into a .tar.bz2) under {results}/example/.


if EXAMPLE_ENABLED:

    rule example:
        output:
            EXAMPLE_FILES,
        params:
            stage="example",
            code=stage_code("example"),
            out_dir=lambda wildcards, output: example_dir(output),
            config=canonical(config["example"]),
        threads: 1
        resources:
            **job_resources("example"),
        log:
            log_file("example.log"),
        benchmark:
            benchmark_file("example.tsv")
        conda:
            CONDA_ENV
        script:
            "../scripts/stage.py"
