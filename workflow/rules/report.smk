# report: every run and group -> results/report/index.html, plus one page
# per run beside it (results/report/{run}.html)


rule report:
    input:
        report_input(),
    output:
        html=f"{RESULTS}/report/index.html",
        pages=[f"{RESULTS}/report/{run}.html" for run in RUNS],
    params:
        runs=report_runs(),
        groups=report_groups(),
        stage=canonical(config["report"]),
        version=VERSION,
    resources:
        **stage_resources("report"),
    log:
        f"{RESULTS}/logs/report/report.log",
    script:
        "../scripts/report.py"
