# rule ingest: read the sources of one shard, validate and filter the structures,
# write the shard's manifest (one row per accepted structure), rejected list and raw
# structures (HDF5 database schema without features, in the manifest's order).
# rule manifest: merge the shard manifests into manifest.tsv / manifest.json /
# rejected.tsv; manifest.json carries the structures fingerprint (filter included).


rule ingest:
    input:
        ingest_inputs,
    output:
        manifest=results("manifest", "shard_{shard}.tsv"),
        rejected=results("manifest", "shard_{shard}.rejected.tsv"),
        structures=results("ingest", "shard_{shard}.h5"),
    params:
        stage="ingest",
        code=stage_code("ingest"),
        specs=ingest_specs,
        shard=lambda wildcards: int(wildcards.shard),
        n_shards=N_SHARDS,
        **ingest_settings(),
    threads: 1
    resources:
        **job_resources("ingest"),
    log:
        log_file("ingest", "shard_{shard}.log"),
    benchmark:
        benchmark_file("ingest", "shard_{shard}.tsv")
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule manifest:
    input:
        shard_manifests=expand(results("manifest", "shard_{shard}.tsv"), shard=SHARDS),
        shard_rejected=expand(
            results("manifest", "shard_{shard}.rejected.tsv"), shard=SHARDS
        ),
    output:
        manifest=report(
            manifest_outputs()["manifest"],
            caption="../report/manifest.rst",
            category="Data",
        ),
        summary=manifest_outputs()["summary"],
        rejected=manifest_outputs()["rejected"],
    params:
        stage="manifest",
        code=stage_code("manifest"),
        **filter_settings(),
    threads: 1
    resources:
        **job_resources("manifest"),
    log:
        log_file("manifest.log"),
    benchmark:
        benchmark_file("manifest.tsv")
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"
