# acquire: a run's source -> results/{run}/movie.ome.zarr
#
# The store is a directory() output: Snakemake deletes it when the job
# fails, and the script raises unless the store is marked complete, so a
# half-written movie is never taken as done. Simulated sources also write
# their ground truth; that is why they have a rule of their own.
#
# With acquire.live_locate the job also locates the frames as they reach the
# store and writes results/{run}/movie.live_features.parquet beside it (not
# an output: the locate rule adopts it only when it matches the store and
# its own params, else locates from the store; pipeline/live/locate.py).


rule acquire:
    input:
        acquire_input,
    output:
        movie=directory(run_path("movie.ome.zarr")),
    log:
        log_path("acquire"),
    wildcard_constraints:
        run=_alternatives(IMPORTED),
    threads: config["compute"]["threads"]
    resources:
        **stage_resources("acquire"),
    params:
        source=acquire_source,
        stage=acquire_params,
        version=VERSION,
    script:
        "../scripts/acquire.py"


rule acquire_simulated:
    output:
        movie=directory(run_path("movie.ome.zarr")),
        truth=run_path("truth.parquet"),
    log:
        log_path("acquire_simulated"),
    wildcard_constraints:
        run=_alternatives(SIMULATED),
    threads: config["compute"]["threads"]
    resources:
        **stage_resources("acquire"),
    params:
        source=acquire_source,
        stage=acquire_params,
        version=VERSION,
    script:
        "../scripts/acquire.py"
