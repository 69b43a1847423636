"""Rule refine: features.parquet -> refined.parquet."""

from pipeline.cli import log_to_file
from pipeline.refine import run


def main(smk) -> None:
    log_to_file(smk.log[0])

    run(
        smk.input.movie,
        smk.input.features,
        smk.output.refined,
        smk.params.stage,
        compute=smk.config["compute"],
        threads=smk.threads,
    )


# The guard matters: worker processes of Dask's 'processes' scheduler import
# this file again (as __mp_main__), where Snakemake's `snakemake` is undefined.
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
