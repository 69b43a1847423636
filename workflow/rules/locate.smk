# locate: movie -> results/{run}/features.parquet (trackpy, matched or
# learned, Dask over frames); method learned also reads the run's detector


rule locate:
    input:
        unpack(locate_input),
    output:
        features=run_path("features.parquet"),
    log:
        log_path("locate"),
    threads: config["compute"]["threads"]
    resources:
        **stage_resources("locate"),
    params:
        stage=section_params("locate"),
        version=VERSION,
    script:
        "../scripts/locate.py"
