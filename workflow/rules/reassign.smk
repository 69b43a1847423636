# reassign: labels (+ movie) -> results/{run}/reassigned.ome.zarr (identities
# carried through time, voxel by voxel) and objects.parquet (per label and
# frame: centroid, volume, velocity). Sequential over time, one frame pair in
# memory, so one core.


rule reassign:
    input:
        movie=run_path("movie.ome.zarr"),
        labels=run_path("labels.ome.zarr"),
    output:
        reassigned=directory(run_path("reassigned.ome.zarr")),
        objects=run_path("objects.parquet"),
    log:
        log_path("reassign"),
    resources:
        **stage_resources("reassign"),
    params:
        stage=section_params("reassign"),
        version=VERSION,
    script:
        "../scripts/reassign.py"
