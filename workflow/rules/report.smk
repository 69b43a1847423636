# report: every run and group -> results/report/index.html, plus one page
# per run beside it (results/report/{run}.html). The index is also shown by
# `snakemake --report` (captions in workflow/report/).


rule report:
    input:
        report_input(),
    output:
        html=report(f"{RESULTS}/report/index.html", caption="../report/index.rst", category="Report"),
        pages=[f"{RESULTS}/report/{run}.html" for run in RUNS],
    log:
        f"{RESULTS}/logs/report/report.log",
    resources:
        **stage_resources("report"),
    params:
        runs=report_runs(),
        groups=report_groups(),
        stage=canonical(config["report"]),
        config_sha256=CONFIG_SHA256,
        version=VERSION,
    script:
        "../scripts/report.py"
