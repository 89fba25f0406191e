# rule example: generate the bundled example data set (ASE EMT Cu/Au/Pt cells, some
# as XSF files, some packed into a .tar.bz2) under {results}/example/.


if EXAMPLE_ENABLED:

    rule example:
        output:
            EXAMPLE_FILES,
        params:
            stage="example",
            code=stage_code("example"),
            out_dir=results("example"),
            config=canonical(config["example"]),
        threads: 1
        resources:
            mem_mb=1000,
            runtime=15,
        log:
            log_file("example.log"),
        benchmark:
            benchmark_file("example.tsv")
        conda:
            CONDA_ENV
        script:
            "../scripts/stage.py"
