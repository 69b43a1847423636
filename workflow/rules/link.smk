# link: refined features -> results/{run}/tracks.parquet, and flow.parquet
# (the accepted links' displacement vectors, for any method: the flow
# linker's field, and what segment/reassign will read)


def link_threads(wildcards):
    """The flow linker reads the movie's frames for its appearance terms on
    compute.threads workers; trackpy's nearest-neighbour linker uses one core."""
    method = stage_params(config, RUNS[wildcards.run], "link")["method"]
    return config["compute"]["threads"] if method == "flow" else 1


rule link:
    input:
        movie=run_path("movie.ome.zarr"),
        features=run_path("refined.parquet"),
    output:
        tracks=run_path("tracks.parquet"),
        flow=run_path("flow.parquet"),
    params:
        stage=section_params("link"),
        version=VERSION,
    threads: link_threads
    resources:
        **stage_resources("link"),
    log:
        log_path("link"),
    script:
        "../scripts/link.py"
