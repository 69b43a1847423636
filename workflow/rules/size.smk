# size: tracks -> results/{run}/sizes.parquet, distribution.csv, summary.json;
# size_group: the runs of a replicate group merged -> results/groups/{group}/


rule size:
    input:
        tracks=run_path("tracks.parquet"),
        movie=run_path("movie.ome.zarr"),
    output:
        sizes=run_path("sizes.parquet"),
        distribution=report(
            run_path("distribution.csv"),
            caption="../report/distribution.rst",
            category="Runs",
            subcategory="{run}",
        ),
        summary=report(
            run_path("summary.json"), caption="../report/summary.rst", category="Runs", subcategory="{run}"
        ),
    params:
        stage=section_params("size"),
        version=VERSION,
    resources:
        **stage_resources("size"),
    log:
        log_path("size"),
    script:
        "../scripts/size.py"


rule size_group:
    input:
        distributions=lambda wc: group_members(wc, "distribution.csv"),
        summaries=lambda wc: group_members(wc, "summary.json"),
    output:
        distribution=f"{RESULTS}/groups/{{group}}/distribution.csv",
        summary=f"{RESULTS}/groups/{{group}}/summary.json",
    params:
        stage=size_group_params,
        runs=lambda wc: GROUPS[wc.group],
        version=VERSION,
    resources:
        **stage_resources("size"),
    log:
        log_path("size_group", "group"),
    script:
        "../scripts/size_group.py"
