# locate: movie -> results/{run}/features.parquet (trackpy, matched or
# learned, Dask over frames); method learned also reads the run's detector;
# the features located during the acquisition (acquire.live_locate) are
# taken instead when they were made from this store with these params


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
