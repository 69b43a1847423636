"""Rule segment: movie.ome.zarr -> labels.ome.zarr."""

from pipeline.cli import log_to_file
from pipeline.io.movie import MovieError, open_movie
from pipeline.segment import run


def main(smk) -> None:
    log_to_file(smk.log[0])

    # compute comes from the config, not from params: changing the scheduler
    # does not re-run the science
    run(
        smk.input.movie,
        smk.output.labels,
        smk.params.stage,
        compute=smk.config["compute"],
        threads=smk.threads,
    )
    # a store not marked complete must not become the rule's output
    labels = open_movie(smk.output.labels)
    if not labels.complete:
        raise MovieError(f"{smk.output.labels}: segmentation did not finish (trackflow.complete is false)")


# The guard matters: worker processes of Dask's 'processes' scheduler import
# this file again (as __mp_main__), where Snakemake's `snakemake` is undefined.
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
