"""Rule train_detector: movie.ome.zarr (its dimensionality) -> detector/weights.npz."""

from pipeline.cli import log_to_file
from pipeline.locate.train import run


def main(smk) -> None:
    log_to_file(smk.log[0])
    run(smk.input.movie, smk.output.weights, smk.params.settings, provenance=smk.output.provenance)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
