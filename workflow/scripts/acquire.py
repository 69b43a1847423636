"""Rule acquire / acquire_simulated: a run's source -> movie.ome.zarr (+ truth.parquet)."""

from pipeline.cli import log_to_file
from pipeline.acquire import run
from pipeline.io.movie import MovieError, open_movie


def main(smk) -> None:
    log_to_file(smk.log[0])

    movie_path = smk.output.movie
    run(smk.params.source, movie_path, smk.params.stage)

    # A store not marked complete (stream cut short, frames missing at the end)
    # must not become the rule's output: raising makes Snakemake delete it.
    movie = open_movie(movie_path)
    if not movie.complete:
        raise MovieError(
            f"{movie_path}: acquisition did not end cleanly (trackflow.complete is false; "
            f"{movie.metadata('frames_written', 0)} of {movie.metadata('frames_expected', '?')} frames written)"
        )
    if len(movie) == 0:
        raise MovieError(f"{movie_path}: the movie has no frames")


# The guard matters: worker processes of Dask's 'processes' scheduler import
# this file again (as __mp_main__), where Snakemake's `snakemake` is undefined.
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
