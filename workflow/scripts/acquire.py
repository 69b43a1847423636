"""Rule acquire / acquire_simulated: a run's source -> movie.ome.zarr (+ truth.parquet)."""

from pipeline.cli import log_to_file
from pipeline.acquire import run


def main(smk) -> None:
    log_to_file(smk.log[0])

    # run() raises unless the store is complete and holds frames, so that a
    # half-written movie never becomes the rule's output (Snakemake deletes it)
    run(
        smk.params.source,
        smk.output.movie,
        smk.params.stage,
        truth=smk.output.get("truth"),
        name=smk.wildcards.run,
    )


# The guard matters: worker processes of Dask's 'processes' scheduler import
# this file again (as __mp_main__), where Snakemake's `snakemake` is undefined.
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
