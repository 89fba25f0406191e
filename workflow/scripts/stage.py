from nnpflow.stages import run_from_snakemake
run_from_snakemake(snakemake)  # noqa: F821 (the object Snakemake gives a script)
