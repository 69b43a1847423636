# locate: movie -> results/{run}/features.parquet (trackpy, Dask over frames)


rule locate:
    input:
        movie=run_path("movie.ome.zarr"),
    output:
        features=run_path("features.parquet"),
    params:
        stage=section_params("locate"),
        version=VERSION,
    threads: config["compute"]["threads"]
    resources:
        **stage_resources("locate"),
    log:
        log_path("locate"),
    script:
        "../scripts/locate.py"
