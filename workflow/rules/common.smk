# Shared set-up of the workflow: validate config.yaml and runs.tsv, and the
# helpers the rules use to name files and params.

import re
from pathlib import Path

import pipeline
from pipeline.io.config import (
    canonical,
    group_params,
    load_runs,
    source_files,
    source_spec,
    stage_params,
    validate_config,
)

# A wrong key or type stops the workflow here, before any job runs, with a
# message naming the key; the schemas fill in the defaults of every key not
# given. (snakemake.utils.validate resolves the sections' relative $refs but
# does not fill the defaults inside them, hence pipeline.io.config, which
# reads the same schema files.)
SCHEMAS = Path(workflow.basedir) / "schemas"
CONFIG_FILES = " + ".join(str(f) for f in workflow.configfiles) or "config"
config.update(validate_config(config, source=CONFIG_FILES, schema_dir=SCHEMAS))

VERSION = pipeline.__version__
RESULTS = config["results"].rstrip("/")
RUNS = {run["run"]: run for run in load_runs(config["runs"], config, schema_dir=SCHEMAS)}
GROUPS = {}
for _run in RUNS.values():
    if _run["group"] is not None:
        GROUPS.setdefault(_run["group"], []).append(_run["run"])


def _alternatives(names):
    """A wildcard regex matching exactly these names (or nothing)."""
    names = sorted(names)
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


SIMULATED = [name for name, run in RUNS.items() if run["kind"] == "simulated"]
SEGMENTED = [name for name, run in RUNS.items() if stage_params(config, run, "segment").get("enabled")]
IMPORTED = [name for name, run in RUNS.items() if run["kind"] != "simulated"]


wildcard_constraints:
    run=_alternatives(RUNS),
    group=_alternatives(GROUPS),


def run_path(name):
    """``results/{run}/name``, with ``{run}`` left as a wildcard."""
    return f"{RESULTS}/{{run}}/{name}"


def log_path(rule_name, wildcard="run"):
    return f"{RESULTS}/logs/{rule_name}/{{{wildcard}}}.log"


def section_params(section):
    """Params function: the stage's section merged with the run's overrides."""

    def params(wildcards):
        return stage_params(config, RUNS[wildcards.run], section)

    return params


def stage_resources(section):
    """A job's cluster resources (mem_mb, runtime in minutes): the stage's
    entry of the ``resources`` section over its ``default``."""
    wanted = {**config["resources"]["default"], **config["resources"][section]}
    return {key: wanted[key] for key in ("mem_mb", "runtime") if key in wanted}


def acquire_source(wildcards):
    return source_spec(RUNS[wildcards.run])


def acquire_input(wildcards):
    # the source files, so that a changed or added frame re-imports the run
    return source_files(RUNS[wildcards.run])


def run_outputs(name):
    return [f"{RESULTS}/{run}/{name}" for run in RUNS]


def group_members(wildcards, name):
    return [f"{RESULTS}/{run}/{name}" for run in GROUPS[wildcards.group]]


def size_group_params(wildcards):
    return group_params(config, [RUNS[run] for run in GROUPS[wildcards.group]])


def report_runs():
    return [
        {"run": name, "group": run["group"], "dir": f"{RESULTS}/{name}"}
        for name, run in RUNS.items()
    ]


def report_input():
    """Everything the report reads: each run's tables, movie and summaries,
    and the groups' merged results."""
    names = (
        "movie.ome.zarr",
        "features.parquet",
        "refined.parquet",
        "tracks.parquet",
        "flow.parquet",
        "sizes.parquet",
        "distribution.csv",
        "summary.json",
    )
    files = {name.split(".")[0]: run_outputs(name) for name in names}
    files["truth"] = [f"{RESULTS}/{run}/truth.parquet" for run in SIMULATED]
    # segmented runs: the report shows their reassigned labels and lifetimes
    files["objects"] = [f"{RESULTS}/{run}/objects.parquet" for run in SEGMENTED]
    files["reassigned"] = [f"{RESULTS}/{run}/reassigned.ome.zarr" for run in SEGMENTED]
    files["group_summaries"] = [f"{RESULTS}/groups/{g}/summary.json" for g in GROUPS]
    files["group_distributions"] = [f"{RESULTS}/groups/{g}/distribution.csv" for g in GROUPS]
    return files


def all_targets():
    return [
        f"{RESULTS}/report/index.html",
        *run_outputs("summary.json"),
        *[f"{RESULTS}/groups/{g}/summary.json" for g in GROUPS],
        *[f"{RESULTS}/{run}/{name}" for run in SEGMENTED for name in ("reassigned.ome.zarr", "objects.parquet")],
    ]
