"""Rule report: every run and group -> report/index.html."""

from pipeline.cli import log_to_file
from pipeline.report import run


def main(smk) -> None:
    log_to_file(smk.log[0])

    run(
        smk.params.runs, smk.output.html, smk.params.stage, groups=smk.params.groups,
        config_sha256=smk.params.config_sha256,
    )


# The guard matters: worker processes of Dask's 'processes' scheduler import
# this file again (as __mp_main__), where Snakemake's `snakemake` is undefined.
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
