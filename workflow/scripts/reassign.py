"""Rule reassign: labels.ome.zarr (+ movie.ome.zarr) -> reassigned.ome.zarr, objects.parquet."""

from pipeline.cli import log_to_file
from pipeline.io.movie import MovieError, open_movie
from pipeline.reassign import run


def main(smk) -> None:
    log_to_file(smk.log[0])

    run(
        smk.input.movie,
        smk.input.labels,
        smk.output.reassigned,
        smk.output.objects,
        smk.params.stage,
    )
    # a store not marked complete must not become the rule's output
    reassigned = open_movie(smk.output.reassigned)
    if not reassigned.complete:
        raise MovieError(f"{smk.output.reassigned}: reassignment did not finish (trackflow.complete is false)")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
