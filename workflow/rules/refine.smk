# refine: features -> results/{run}/refined.parquet (least squares; method
# 'none' passes the features through)


rule refine:
    input:
        movie=run_path("movie.ome.zarr"),
        features=run_path("features.parquet"),
    output:
        refined=run_path("refined.parquet"),
    log:
        log_path("refine"),
    threads: config["compute"]["threads"]
    resources:
        **stage_resources("refine"),
    params:
        stage=section_params("refine"),
        version=VERSION,
    script:
        "../scripts/refine.py"
