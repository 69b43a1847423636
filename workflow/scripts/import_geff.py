"""Rule import_geff: another tracker's geff store -> tracks.parquet."""

from pipeline.cli import log_to_file
from pipeline.io.geff import import_tracks_geff


def main(smk) -> None:
    log_to_file(smk.log[0])

    import_tracks_geff(smk.input.geff, smk.output.tracks, smk.params.settings)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
