"""The Snakemake workflow end to end, on small simulated runs and on the real
bulk_water frames: real Snakemake subprocesses, real stores on disk.

What re-runs is read two ways: the jobs a dry run lists, with their run
(what Snakemake plans), and the outputs' modification times (what a real run
actually rewrote).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.io import open_movie, read_table, table_metadata
from pipeline.io.config import load_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILE = REPO / "profiles" / "default"

# small, fast runs: 64x64 px, 40 frames, a few particles each
SIMULATED = "{shape: [64, 64], n_frames: 40, n_particles: 8, diameters_nm: [%d], seed: %d}"
RUN_FILES = (
    "movie.ome.zarr",
    "truth.parquet",
    "features.parquet",
    "refined.parquet",
    "tracks.parquet",
    "flow.parquet",
    "tracks.geff",
    "sizes.parquet",
    "distribution.csv",
    "summary.json",
)


def snakemake(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir),
        "--workflow-profile", str(PROFILE),
        "--cores", "2",
        *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def planned_jobs(workdir: Path, *args: str) -> dict[str, list[str]]:
    """What a dry run plans: rule -> the wildcard value (run or group) of each
    job, sorted ('' for rules without wildcards); {} when nothing is to do."""
    done = snakemake(workdir, "--dry-run", *args)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    if "Nothing to be done" in out:
        return {}
    plan: dict[str, list[str]] = {}
    for job in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", out, re.M):
        rule, body = job[1], job[2]
        if rule == "all":
            continue
        wildcards = re.search(r"^\s+wildcards: \w+=(\S+)", body, re.M)
        plan.setdefault(rule, []).append(wildcards[1] if wildcards else "")
    assert plan, out
    return {rule: sorted(values) for rule, values in plan.items()}


def output_times(workdir: Path) -> dict[str, int]:
    """Modification time of every output (a store by its root metadata: a
    movie's zarr.json, tracks.geff's .zattrs)."""
    times = {}
    for path in (workdir / "results").rglob("*"):
        relative = path.relative_to(workdir)
        if "logs" in relative.parts or not path.is_file():
            continue
        store = next((p for p in relative.parents if p.name.endswith((".ome.zarr", ".geff"))), None)
        if store is None:
            times[str(relative)] = path.stat().st_mtime_ns
        elif relative.parent == store and path.name in ("zarr.json", ".zattrs"):
            times[str(store)] = path.stat().st_mtime_ns
    return times


def changed(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {path for path, t in after.items() if before.get(path) != t}


def edit_yaml(path: Path, section: str, key: str, value) -> None:
    config = yaml.safe_load(path.read_text()) or {}
    config.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def write_config(workdir: Path) -> Path:
    """The shipped config, with one-thread jobs: tiny movies gain nothing from
    a worker pool, and two jobs then run side by side on the 2 cores."""
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.setdefault("compute", {})["threads"] = 1
    path = workdir / "config" / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Two simulated replicate runs taken through the whole workflow once."""
    workdir = tmp_path_factory.mktemp("workflow")
    write_config(workdir)
    (workdir / "config" / "runs.tsv").write_text(
        "run\tsource\tgroup\tsettings\toverrides\n"
        f"a\tsimulated\tbeads\t{SIMULATED % (150, 1)}\t\n"
        f"b\tsimulated\tbeads\t{SIMULATED % (150, 2)}\t\n"
    )
    done = snakemake(workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    return workdir


def test_full_run_writes_the_results_layout(workdir):
    results = workdir / "results"
    config = load_config(workdir / "config" / "config.yaml")
    for run in ("a", "b"):
        for name in RUN_FILES:
            assert (results / run / name).exists(), f"results/{run}/{name} missing"
        movie = open_movie(results / run / "movie.ome.zarr")
        assert movie.complete and len(movie) == 40 and movie.frame_shape == (64, 64)
        features = read_table(results / run / "features.parquet", required=("frame", "y", "x", "mass"))
        assert len(features) > 40
        tracks = read_table(results / run / "tracks.parquet", required=("particle",))
        assert tracks["particle"].nunique() >= 1
        # each table records exactly its stage's section as params
        assert table_metadata(results / run / "features.parquet")["params"] == config["locate"]
        assert table_metadata(results / run / "tracks.parquet")["params"]["search_range"] == (
            config["link"]["search_range"]
        )
        summary = json.loads((results / run / "summary.json").read_text())
        assert isinstance(summary, dict) and summary
    for name in ("distribution.csv", "summary.json"):
        assert (results / "groups" / "beads" / name).exists()
    report = (results / "report" / "index.html").read_text()
    assert "<html" in report.lower() and "a" in report and "b" in report
    for rule in ("acquire_simulated", "locate", "refine", "link", "size", "size_group", "report"):
        assert (results / "logs" / rule).is_dir(), f"rule {rule} left no log"


def test_snakemake_report_shows_the_captioned_outputs(workdir, tmp_path):
    """`snakemake --report` packs the outputs the rules mark with report():
    the report's index and each run's distribution and summary, with their
    captions (workflow/report/*.rst)."""
    archive = tmp_path / "report.zip"
    done = snakemake(workdir, "--report", str(archive))
    assert done.returncode == 0, done.stdout + done.stderr
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        page = z.read(next(n for n in names if n.endswith("report/report.html"))).decode()
    packed = [Path(n).name for n in names if "/data/raw/" in n]
    assert sorted(packed) == sorted(["index.html", *["distribution.csv", "summary.json"] * 2])
    for caption in ("The trackflow report's index", "Size distribution of run a", "Summary of run b"):
        assert caption in page, caption


def test_nothing_changed_runs_nothing(workdir):
    assert planned_jobs(workdir) == {}


def test_changing_compute_runs_nothing(workdir):
    config = workdir / "config" / "config.yaml"
    original = config.read_text()
    try:
        edit_yaml(config, "compute", "scheduler", "threads")
        edit_yaml(config, "compute", "threads", 2)
        assert planned_jobs(workdir) == {}
    finally:
        config.write_text(original)


def test_link_parameter_reruns_link_and_downstream_only(workdir):
    config = workdir / "config" / "config.yaml"
    current = load_config(config)["link"]["search_range"]
    edit_yaml(config, "link", "search_range", current + 1)
    assert planned_jobs(workdir) == {
        "link": ["a", "b"], "size": ["a", "b"], "size_group": ["beads"], "report": [""]
    }  # fmt: skip
    before = output_times(workdir)
    done = snakemake(workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    rewritten = changed(before, output_times(workdir))
    expected = {f"results/{run}/{name}" for run in "ab" for name in RUN_FILES[4:]}
    expected |= {"results/groups/beads/distribution.csv", "results/groups/beads/summary.json"}
    expected |= {"results/report/index.html", "results/report/a.html", "results/report/b.html"}
    assert rewritten == expected
    params = table_metadata(workdir / "results" / "a" / "tracks.parquet")["params"]
    assert params["search_range"] == current + 1
    assert planned_jobs(workdir) == {}


def test_deleted_features_are_made_again_without_acquiring(workdir):
    """Snakemake does not re-make a missing intermediate table while what
    depends on it is up to date; asked for, it re-runs just locate, and as
    the table comes out the same (same checksum), nothing downstream re-runs."""
    features = workdir / "results" / "b" / "features.parquet"
    content = features.read_bytes()
    features.unlink()
    target = "results/b/features.parquet"
    assert planned_jobs(workdir, target) == {"locate": ["b"]}
    before = output_times(workdir)
    done = snakemake(workdir, target)
    assert done.returncode == 0, done.stdout + done.stderr
    assert changed(before, output_times(workdir)) == {target}  # the movie was not acquired again
    assert features.read_bytes() == content
    assert planned_jobs(workdir) == {}


def test_run_override_reruns_that_run_only(workdir):
    """A per-run override plans that run's locate and what follows from it,
    nothing of the other run, and no acquisition."""
    runs = workdir / "config" / "runs.tsv"
    original = runs.read_text()
    minmass = load_config(workdir / "config" / "config.yaml")["locate"]["minmass"] + 5
    lines = original.splitlines()
    lines[1] += f"{{locate: {{minmass: {minmass}}}}}"
    runs.write_text("\n".join(lines) + "\n")
    try:
        assert planned_jobs(workdir) == {
            "locate": ["a"], "refine": ["a"], "link": ["a"], "size": ["a"], "size_group": ["beads"], "report": [""]
        }  # fmt: skip
    finally:
        runs.write_text(original)
    assert planned_jobs(workdir) == {}


@pytest.mark.parametrize(
    "section, key, value, named",
    [
        ("locate", "minmas", 30, "locate.minmas"),
        ("link", "memory", "three", "link.memory"),
        ("compute", "sheduler", "threads", "compute.sheduler"),
    ],
)
def test_bad_config_fails_before_any_job(workdir, tmp_path, section, key, value, named):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({section: {key: value}}))
    before = output_times(workdir)
    done = snakemake(workdir, "--configfile", str(bad))
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert named in out, out
    assert "rule " not in out.replace("localrule ", "")  # no job was started
    assert output_times(workdir) == before


def test_bad_run_override_fails_naming_run_and_key(workdir, tmp_path):
    runs = tmp_path / "runs.tsv"
    runs.write_text("run\tsource\toverrides\na\tsimulated\t{link: {serch_range: 3}}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"runs": str(runs)}))
    done = snakemake(workdir, "--configfile", str(bad), "--dry-run")
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "run 'a'" in out and "serch_range" in out, out


def test_failed_import_leaves_no_movie(tmp_path):
    """A source that breaks half way: the job fails, naming the bad file, and
    Snakemake removes the partial store instead of keeping it as output."""
    imageio = pytest.importorskip("imageio.v3")
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        imageio.imwrite(frames / f"frame_{i:02d}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    (frames / "frame_03.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_config(tmp_path)
    (tmp_path / "config" / "runs.tsv").write_text(
        "run\tsource\tsettings\n"
        "broken\tframes/*.png\t{pixel_size_um: 0.2, frame_interval_s: 0.05}\n"
    )
    done = snakemake(tmp_path, "results/broken/features.parquet")
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "frame_03.png" in out, out
    assert not (tmp_path / "results" / "broken" / "movie.ome.zarr").exists()


def test_bulk_water_goes_through_locate_link_and_size(tmp_path, bulk_water_dir):
    write_config(tmp_path)
    settings = "{channel: 1, pixel_size_um: 0.3509, frame_interval_s: 0.041667, temperature_K: 295}"
    # refine passes the features through: the test is about import, locate, link and size
    overrides = (
        "{locate: {diameter: 11, minmass: 20, invert: true}, refine: {method: none}, "
        "link: {search_range: 5, memory: 3}}"
    )
    (tmp_path / "config" / "runs.tsv").write_text(
        "run\tsource\tsettings\toverrides\n"
        f"water\t{bulk_water_dir}/*.png\t{settings}\t{overrides}\n"
    )
    done = snakemake(tmp_path, "results/water/summary.json")
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "results" / "water"
    movie = open_movie(run / "movie.ome.zarr")
    assert len(movie) == 40 and movie.frame_shape == (424, 640)
    assert movie.pixel_size_um == (0.3509, 0.3509)
    features = read_table(run / "features.parquet")
    assert len(features) > 40 * 10  # the frames hold dozens of spheres each
    tracks = read_table(run / "tracks.parquet", required=("particle",))
    assert tracks["particle"].nunique() > 10
    sizes = read_table(run / "sizes.parquet", required=("particle", "diameter_nm"))
    assert len(sizes) > 10
    # 1 µm spheres: the median size lands within a factor 3 (40 frames, drift
    # not subtracted); a lost pixel size or frame interval would be far off
    summary = json.loads((run / "summary.json").read_text())
    assert 333 < summary["d50_nm"] < 3000, summary["d50_nm"]
    assert not (tmp_path / "results" / "report").exists()  # only what was asked for ran


def test_demo_command_plans_the_shipped_workflow(tmp_path):
    """`trackflow demo` copies the shipped config into its workdir and runs
    the workflow there (here as a dry run: the full demo is `make demo`)."""
    workdir = tmp_path / "demo"
    cmd = [sys.executable, "-m", "pipeline.cli", "demo", "--workdir", str(workdir), "--cores", "2", "--dry-run"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for name in ("config.yaml", "runs.tsv"):
        assert (workdir / "config" / name).read_text() == (REPO / "config" / name).read_text()
    n_runs = len((REPO / "config" / "runs.tsv").read_text().strip().splitlines()) - 1
    jobs = dict((m[1], int(m[2])) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", out.split("Job stats:")[1], re.M))
    assert jobs["acquire_simulated"] == jobs["locate"] == jobs["size"] == n_runs
    assert jobs["report"] == 1
    assert not (workdir / "results").exists()
