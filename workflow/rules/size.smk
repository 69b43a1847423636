# size: tracks -> results/{run}/sizes.parquet, distribution.csv, summary.json
# (conditions from the movie; for a geff run, which has none, its settings);
# size_group: the runs of a replicate group merged -> results/groups/{group}/


rule size:
    input:
        unpack(size_input),
    output:
        sizes=run_path("sizes.parquet"),
        distribution=report(
            run_path("distribution.csv"),
            caption="../report/distribution.rst",
            category="Runs",
            subcategory="{run}",
        ),
        summary=report(run_path("summary.json"), caption="../report/summary.rst", category="Runs", subcategory="{run}"),
    log:
        log_path("size"),
    resources:
        **stage_resources("size"),
    params:
        stage=section_params("size"),
        settings=size_settings,
        version=VERSION,
    script:
        "../scripts/size.py"


rule size_group:
    input:
        distributions=lambda wc: group_members(wc, "distribution.csv"),
        summaries=lambda wc: group_members(wc, "summary.json"),
    output:
        distribution=f"{RESULTS}/groups/{{group}}/distribution.csv",
        summary=f"{RESULTS}/groups/{{group}}/summary.json",
    log:
        log_path("size_group", "group"),
    resources:
        **stage_resources("size"),
    params:
        stage=size_group_params,
        runs=lambda wc: GROUPS[wc.group],
        version=VERSION,
    script:
        "../scripts/size_group.py"
