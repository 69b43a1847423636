"""Rule size_group: the runs of a replicate group merged -> groups/{group}/."""

from pipeline.cli import log_to_file
from pipeline.size import run_group


def main(smk) -> None:
    log_to_file(smk.log[0])

    run_group(
        smk.wildcards.group,
        list(smk.input.distributions),
        list(smk.input.summaries),
        smk.output.distribution,
        smk.output.summary,
        smk.params.stage,
        run_names=list(smk.params.runs),
    )


# The guard matters: worker processes of Dask's 'processes' scheduler import
# this file again (as __mp_main__), where Snakemake's `snakemake` is undefined.
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
