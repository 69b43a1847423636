"""Rule size: tracks.parquet -> sizes.parquet, distribution.csv, summary.json."""

from pipeline.cli import log_to_file
from pipeline.size import run


def main(smk) -> None:
    log_to_file(smk.log[0])

    # a geff run has no movie: its settings give the conditions
    run(
        smk.input.tracks,
        smk.input.get("movie"),
        smk.output.sizes,
        smk.output.distribution,
        smk.output.summary,
        smk.params.stage,
        run_name=smk.wildcards.run,
        settings=smk.params.settings or None,
    )


# The guard matters: worker processes of Dask's 'processes' scheduler import
# this file again (as __mp_main__), where Snakemake's `snakemake` is undefined.
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
