# link: refined features -> results/{run}/tracks.parquet, flow.parquet (the
# accepted links' displacement vectors, for any method: the flow linker's
# field, and what segment/reassign will read) and tracks.geff (the tracks in
# the graph exchange file format, for other tracking tools; a directory)
#
# import_geff: a run whose source is a geff store of another tracker's tracks
# -> results/{run}/tracks.parquet, in the link stage's layout (divisions and
# merges split into tracks of their own, counted in its provenance)


rule link:
    input:
        movie=run_path("movie.ome.zarr"),
        features=run_path("refined.parquet"),
    output:
        tracks=run_path("tracks.parquet"),
        flow=run_path("flow.parquet"),
        geff=directory(run_path("tracks.geff")),
    log:
        log_path("link"),
    wildcard_constraints:
        run=_alternatives(TRACKED),
    threads: link_threads
    resources:
        **stage_resources("link"),
    params:
        stage=section_params("link"),
        version=VERSION,
    script:
        "../scripts/link.py"


rule import_geff:
    input:
        geff=geff_source,
    output:
        tracks=run_path("tracks.parquet"),
    log:
        log_path("import_geff"),
    wildcard_constraints:
        run=_alternatives(GEFF),
    resources:
        **stage_resources("link"),
    params:
        settings=geff_settings,
        version=VERSION,
    script:
        "../scripts/import_geff.py"
