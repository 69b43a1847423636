# Shared set-up of the workflow: validate config.yaml and runs.tsv, and the
# helpers the rules use to name files and params (all of them here: the rule
# files hold rules only, as `snakemake --lint` asks).

import hashlib
import json
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
from pipeline.locate.learned import training_settings

# A wrong key or type stops the workflow here, before any job runs, with a
# message naming the key; the schemas fill in the defaults of every key not
# given. (snakemake.utils.validate resolves the sections' relative $refs but
# does not fill the defaults inside them, hence pipeline.io.config, which
# reads the same schema files.)
# current_basedir (this file's directory), not workflow.basedir: used as a
# module, the latter is the directory of the user's own Snakefile
SCHEMAS = Path(workflow.current_basedir).parent / "schemas"
CONFIG_FILES = " + ".join(str(f) for f in workflow.configfiles) or "config"
config.update(validate_config(config, source=CONFIG_FILES, schema_dir=SCHEMAS))

VERSION = pipeline.__version__
# what the report states the results were made with: the validated config
# (defaults filled in), so that configs differing only in what they spell
# out hash alike. compute and resources say how jobs ran, not what they made:
# left out, so that changing them re-runs nothing (the hash is a report param)
CONFIG_SHA256 = hashlib.sha256(
    json.dumps(
        canonical({k: v for k, v in config.items() if k not in ("compute", "resources")}),
        sort_keys=True,
        default=str,
    ).encode()
).hexdigest()
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
# runs whose tracks another tracker made (a geff store): imported, then sized
GEFF = [name for name, run in RUNS.items() if run["kind"] == "geff"]
TRACKED = [name for name in RUNS if name not in GEFF]
SEGMENTED = [name for name in TRACKED if stage_params(config, RUNS[name], "segment").get("enabled")]
IMPORTED = [name for name in TRACKED if name not in SIMULATED]


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


def acquire_params(wildcards):
    """The acquire rule's params: its section less live_locate, which changes
    when locate runs, not what the movie is (pipeline.live.locate): switching
    it re-runs nothing, and the acquire job reads it, with the locate
    section, from the config (workflow/scripts/acquire.py)."""
    params = stage_params(config, RUNS[wildcards.run], "acquire")
    params.pop("live_locate", None)
    return params


def locate_input(wildcards):
    """The run's movie, and its trained detector for locate.method learned."""
    inputs = {"movie": f"{RESULTS}/{wildcards.run}/movie.ome.zarr"}
    if stage_params(config, RUNS[wildcards.run], "locate")["method"] == "learned":
        inputs["detector"] = f"{RESULTS}/{wildcards.run}/detector/weights.npz"
    return inputs


def detector_params(wildcards):
    """train_detector's params: the training settings of the run's locate
    section alone (resolved), so that nothing else re-trains."""
    locate = stage_params(config, RUNS[wildcards.run], "locate")
    return canonical(training_settings(locate["diameter"], locate["learned"]))


def stage_resources(section):
    """A job's cluster resources (mem_mb, runtime in minutes): the stage's
    entry of the ``resources`` section over its ``default``."""
    wanted = {**config["resources"]["default"], **config["resources"][section]}
    return {key: wanted[key] for key in ("mem_mb", "runtime") if key in wanted}


def link_threads(wildcards):
    """The flow linker reads the movie's frames for its appearance terms on
    compute.threads workers; trackpy's nearest-neighbour linker uses one core."""
    method = stage_params(config, RUNS[wildcards.run], "link")["method"]
    return config["compute"]["threads"] if method == "flow" else 1


def acquire_source(wildcards):
    return source_spec(RUNS[wildcards.run])


def acquire_input(wildcards):
    # the source files, so that a changed or added frame re-imports the run
    return source_files(RUNS[wildcards.run])


def geff_source(wildcards):
    return RUNS[wildcards.run]["source"]


def geff_settings(wildcards):
    return canonical({k: v for k, v in RUNS[wildcards.run]["settings"].items() if k != "kind"})


def size_input(wildcards):
    """The run's tracks, and its movie for the conditions; a geff run has
    no movie: its settings give them (size_settings)."""
    tracks = f"{RESULTS}/{wildcards.run}/tracks.parquet"
    if wildcards.run in GEFF:
        return {"tracks": tracks}
    return {"tracks": tracks, "movie": f"{RESULTS}/{wildcards.run}/movie.ome.zarr"}


def size_settings(wildcards):
    return geff_settings(wildcards) if wildcards.run in GEFF else {}


def run_outputs(name):
    return [f"{RESULTS}/{run}/{name}" for run in RUNS]


def group_members(wildcards, name):
    return [f"{RESULTS}/{run}/{name}" for run in GROUPS[wildcards.group]]


def size_group_params(wildcards):
    return group_params(config, [RUNS[run] for run in GROUPS[wildcards.group]])


def run_files(name):
    """What the report reads of a run: the files the workflow makes for it."""
    if name in GEFF:  # the imported tracks and their sizes
        files = {key: f"{key}.{ext}" for key, ext in (("tracks", "parquet"), ("sizes", "parquet"))}
        files.update(distribution="distribution.csv", summary="summary.json")
        return {key: f"{RESULTS}/{name}/{file}" for key, file in files.items()}
    files = {
        "movie": "movie.ome.zarr",
        "features": "features.parquet",
        "refined": "refined.parquet",
        "tracks": "tracks.parquet",
        "flow": "flow.parquet",
        "sizes": "sizes.parquet",
        "distribution": "distribution.csv",
        "summary": "summary.json",
    }
    if name in SIMULATED:
        files["truth"] = "truth.parquet"
    if name in SEGMENTED:  # the report shows their reassigned labels and lifetimes
        files.update(objects="objects.parquet", reassigned="reassigned.ome.zarr")
    return {key: f"{RESULTS}/{name}/{file}" for key, file in files.items()}


def group_files(group):
    return {key: f"{RESULTS}/groups/{group}/{key}.{ext}" for key, ext in (("summary", "json"), ("distribution", "csv"))}


def report_runs():
    # sources: the files the report lists with their sha256
    return [
        {"run": name, "group": run["group"], "files": run_files(name), "sources": source_files(run)}
        for name, run in RUNS.items()
    ]


def report_groups():
    return {group: group_files(group) for group in GROUPS}


def report_input():
    """Everything the report reads: each run's files and the groups' merged results."""
    return [
        *(path for run in report_runs() for path in run["files"].values()),
        *(path for files in report_groups().values() for path in files.values()),
    ]


def all_targets():
    return [
        f"{RESULTS}/report/index.html",
        *run_outputs("summary.json"),
        *[f"{RESULTS}/groups/{g}/summary.json" for g in GROUPS],
        *[f"{RESULTS}/{run}/{name}" for run in SEGMENTED for name in ("reassigned.ome.zarr", "objects.parquet")],
    ]
