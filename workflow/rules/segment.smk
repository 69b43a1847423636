# segment: movie -> results/{run}/labels.ome.zarr (objects labelled per frame,
# Dask over frames). Opt-in: the workflow asks for it only when
# segment.enabled is true.
#
# The store is a directory() output: Snakemake deletes it when the job fails,
# and the script raises unless the store is marked complete, so a
# half-written label store is never taken as done.


rule segment:
    input:
        movie=run_path("movie.ome.zarr"),
    output:
        labels=directory(run_path("labels.ome.zarr")),
    log:
        log_path("segment"),
    threads: config["compute"]["threads"]
    resources:
        **stage_resources("segment"),
    params:
        stage=section_params("segment"),
        version=VERSION,
    script:
        "../scripts/segment.py"
