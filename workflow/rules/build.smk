# checkpoint species (species: null only): the species of the whole data set from the
# manifest summary into results/manifest/species.txt, an update() output the stage
# rewrites only when the species change.  The build jobs read it as an ancient input
# and as their species param: a file with known species reruns its own shard's build
# only; a new species changes every build's param, and Snakemake, re-planning after
# the checkpoint, rebuilds every shard (the species job's log says why).
# rule build: featurise one shard's raw structures (ingest output) with the descriptor
# into a database shard (features + compact force derivatives).  One job per shard,
# `threads` from database.threads.
# rule merge: the database shards, in shard order, into the training database and its
# JSON summary (fingerprints, counts, statistics).  The database holds the manifest's
# structures in the manifest's order; the merge checks it against manifest.json.


if SPECIES is None:

    checkpoint species:
        input:
            manifest_summary=manifest_outputs()["summary"],
        output:
            species=update(species_file()),
        params:
            stage="species",
            code=stage_code("species"),
        threads: 1
        resources:
            **job_resources("species"),
        log:
            log_file("species.log"),
        benchmark:
            benchmark_file("species.tsv")
        conda:
            CONDA_ENV
        script:
            "../scripts/stage.py"


rule build:
    input:
        unpack(build_inputs),
    output:
        database=results("database", "shard_{shard}.h5"),
    params:
        stage="build",
        code=stage_code("build"),
        descriptor=descriptor_settings(),
        database_cfg=database_settings(),
        species=build_species,
    threads: BUILD_THREADS
    resources:
        **job_resources("build"),
        gpu=BUILD_GPUS,
    log:
        log_file("build", "shard_{shard}.log"),
    benchmark:
        benchmark_file("build", "shard_{shard}.tsv")
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule merge:
    input:
        shards=expand(results("database", "shard_{shard}.h5"), shard=SHARDS),
        manifest_summary=manifest_outputs()["summary"],
    output:
        database=database_outputs()["database"],
        summary=database_outputs()["summary"],
    params:
        stage="merge",
        code=stage_code("merge"),
    threads: 1
    resources:
        **job_resources("merge"),
    log:
        log_file("merge.log"),
    benchmark:
        benchmark_file("merge.tsv")
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"
