# link: refined features -> results/{run}/tracks.parquet, and flow.parquet
# (the accepted links' displacement vectors, for any method: the flow
# linker's field, and what segment/reassign will read)


rule link:
    input:
        movie=run_path("movie.ome.zarr"),
        features=run_path("refined.parquet"),
    output:
        tracks=run_path("tracks.parquet"),
        flow=run_path("flow.parquet"),
    log:
        log_path("link"),
    threads: link_threads
    resources:
        **stage_resources("link"),
    params:
        stage=section_params("link"),
        version=VERSION,
    script:
        "../scripts/link.py"
