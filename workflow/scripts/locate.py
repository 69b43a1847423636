"""Rule locate: movie.ome.zarr -> features.parquet."""

from pipeline.cli import log_to_file
from pipeline.live.locate import locate_or_adopt


def main(smk) -> None:
    log_to_file(smk.log[0])

    # compute comes from the config, not from params: changing the scheduler
    # does not re-run the science. The features located during the
    # acquisition (acquire.live_locate) are taken when they are exactly what
    # locating the store with these params gives; else it locates the store.
    locate_or_adopt(
        smk.input.movie,
        smk.output.features,
        smk.params.stage,
        compute=smk.config["compute"],
        threads=smk.threads,
        detector=getattr(smk.input, "detector", None),
    )


# The guard matters: worker processes of Dask's 'processes' scheduler import
# this file again (as __mp_main__), where Snakemake's `snakemake` is undefined.
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
