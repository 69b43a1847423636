"""Rule acquire / acquire_simulated: a run's source -> movie.ome.zarr (+ truth.parquet)."""

from pipeline.cli import log_to_file
from pipeline.acquire import run
from pipeline.live.locate import LIVE_SHARD_SECONDS, live_locate, workflow_live_params


def main(smk) -> None:
    log_to_file(smk.log[0])

    # acquire.live_locate and the locate section, from the config rather
    # than params: they must not re-run the acquisition
    locate = workflow_live_params(smk.config, smk.wildcards.run)

    # run() raises unless the store is complete and holds frames, so that a
    # half-written movie never becomes the rule's output (Snakemake deletes it)
    with live_locate(smk.output.movie, locate, enabled=locate is not None):
        run(
            smk.params.source,
            smk.output.movie,
            smk.params.stage,
            truth=smk.output.get("truth"),
            name=smk.wildcards.run,
            # shards of a second of frames: the follower is never further behind
            shard_seconds=LIVE_SHARD_SECONDS if locate is not None else None,
        )


# The guard matters: worker processes of Dask's 'processes' scheduler import
# this file again (as __mp_main__), where Snakemake's `snakemake` is undefined.
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (defined by Snakemake's script preamble)
