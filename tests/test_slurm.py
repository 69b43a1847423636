"""The workflow on a real SLURM cluster: the one-node cluster of
tests/setup_slurm.sh (slurmctld, slurmd, munged on this machine, no
accounting database), driven through profiles/slurm by the Snakemake SLURM
executor plugin. Every job must go through SLURM, ask for the resources of
its stage's config, and give exactly the tables of a local run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import skip_or_fail
from pipeline.io.tables import read_table

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
RUNS = ("a", "b")
SIMULATED = "{shape: [64, 64], n_frames: 30, n_particles: 8, diameters_nm: [150], seed: %d}"
# small, distinct requests, to recognise them in SLURM's records
RESOURCES = {"default": {"mem_mb": 500, "runtime": 10}, "locate": {"mem_mb": 700, "runtime": 15}}
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: .*?/rule_(\w+)/")


def snakemake(workdir: Path, profile: str, *args: str) -> subprocess.Popen:
    """Start Snakemake on ``workdir`` with ``profiles/<profile>``."""
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir),
        "--workflow-profile", str(REPO / "profiles" / profile),
        *args,
    ]  # fmt: skip
    # jobs inherit this environment (sbatch --export=ALL): the venv first on PATH
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=workdir
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # Snakemake cancels its SLURM jobs on SIGTERM
        out, _ = proc.communicate(timeout=60)
        raise AssertionError(f"snakemake did not finish within {timeout} s:\n{out[-5000:]}")
    return proc.returncode, out


def make_workdir(root: Path, frames: Path) -> Path:
    """Two simulated runs and a broken one: a PNG that is not one."""
    (root / "config").mkdir(parents=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    # one core per job, so that the 2-core node runs both runs' jobs at once
    config["compute"] = {**config.get("compute", {}), "threads": 1}
    config["resources"] = RESOURCES
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = ["run\tsource\tgroup\tsettings\toverrides"]
    rows += [f"{run}\tsimulated\t\t{SIMULATED % (i + 1)}\t" for i, run in enumerate(RUNS)]
    rows += [f"broken\t{frames}\t\t{{pixel_size_um: 0.35, frame_interval_s: 0.04}}\t"]
    (root / "config" / "runs.tsv").write_text("\n".join(rows) + "\n")
    return root


def jobcomp(path: Path) -> dict[str, dict[str, str]]:
    """SLURM's job completion log: ``{job id: {field: value}}``."""
    records = {}
    for line in path.read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if "JobId" in fields:
            records[fields["JobId"]] = fields
    return records


@pytest.fixture(scope="module")
def slurm_plugin():
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        skip_or_fail("snakemake-executor-plugin-slurm is not installed (pip install 'trackflow[slurm]')")


@pytest.fixture(scope="module")
def local_and_slurm(slurm_cluster, slurm_plugin, tmp_path_factory):
    """Two simulated runs taken to their sizes locally and on SLURM, at the
    same time (the SLURM side mostly waits); the SLURM side also tries to
    import a broken run, whose failure must not stop the good runs."""
    frames = tmp_path_factory.mktemp("frames")
    (frames / "frame_000.png").write_bytes(b"this is not a PNG")
    local = make_workdir(tmp_path_factory.mktemp("local"), frames)
    cluster = make_workdir(tmp_path_factory.mktemp("slurm"), frames)
    summaries = [f"results/{run}/summary.json" for run in RUNS]
    slurm = snakemake(
        cluster, "slurm", *summaries, "results/broken/movie.ome.zarr",
        # first status check after 1 s: the test's jobs take seconds, not hours
        "--slurm-init-seconds-before-status-checks", "1", "--retries", "0",
    )  # fmt: skip
    local_rc, local_log = finish(snakemake(local, "default", "--cores", "2", *summaries))
    slurm_rc, slurm_log = finish(slurm)
    assert local_rc == 0, local_log
    assert "Exiting because a job execution failed" in slurm_log, slurm_log
    assert slurm_rc != 0, "the broken run's failure must fail the workflow"
    return local, cluster, slurm_log


def test_every_job_ran_as_a_slurm_job(local_and_slurm, slurm_cluster):
    _, cluster, log = local_and_slurm
    submitted = dict(SUBMITTED.findall(log))
    rules = sorted(submitted.values())
    per_run = ["acquire_simulated", "link", "locate", "refine", "size"]
    assert rules == sorted(per_run * len(RUNS) + ["acquire"]), f"jobs submitted to SLURM: {submitted}"
    run_id = re.search(r"SLURM run ID: (\S+)", log)[1]
    records = jobcomp(slurm_cluster["jobcomp_log"])
    for job_id, rule in submitted.items():
        assert job_id in records, f"SLURM has no record of job {job_id} ({rule})"
        record = records[job_id]
        state = "FAILED" if rule == "acquire" else "COMPLETED"  # the broken run's import fails
        assert record["JobState"] == state, f"job {job_id} ({rule}): {record['JobState']}"
        assert record["Name"] == run_id and record["WorkDir"] == str(cluster)
        assert record["NodeList"] == os.uname().nodename.split(".")[0]


def test_jobs_ask_for_their_stage_resources(local_and_slurm, slurm_cluster):
    _, _, log = local_and_slurm
    records = jobcomp(slurm_cluster["jobcomp_log"])
    for job_id, rule in SUBMITTED.findall(log):
        wanted = {**RESOURCES["default"], **RESOURCES.get(rule, {})}
        tres = dict(item.split("=", 1) for item in records[job_id]["Tres"].split(","))
        assert tres["mem"] == f"{wanted['mem_mb']}M", f"{rule} job {job_id}: {tres}"
        assert tres["cpu"] == "1", f"{rule} job {job_id} (compute.threads is 1): {tres}"
        assert records[job_id]["TimeLimit"] == str(wanted["runtime"]), f"{rule} job {job_id}"


def test_slurm_results_equal_the_local_run(local_and_slurm):
    local, cluster, _ = local_and_slurm
    for run in RUNS:
        for name in ("features.parquet", "refined.parquet", "tracks.parquet", "sizes.parquet"):
            ours, theirs = read_table(cluster / "results" / run / name), read_table(local / "results" / run / name)
            assert len(ours) > 0, f"results/{run}/{name} is empty"
            pd.testing.assert_frame_equal(ours, theirs, obj=f"results/{run}/{name}")
        assert (cluster / "results" / run / "summary.json").read_text() == (
            local / "results" / run / "summary.json"
        ).read_text()


def test_a_failed_slurm_job_is_reported_and_the_other_runs_go_on(local_and_slurm, slurm_cluster):
    """squeue, not sacct, reports the failure (no accounting here); Snakemake
    names the failed job's SLURM id, keeps the other runs going
    (keep-going), and leaves no half-written store behind."""
    _, cluster, log = local_and_slurm
    failed = [job_id for job_id, rule in SUBMITTED.findall(log) if rule == "acquire"]
    assert len(failed) == 1, log
    assert re.search(rf"SLURM-job '{failed[0]}' failed, SLURM status is: 'FAILED'", log), log
    assert not (cluster / "results" / "broken" / "movie.ome.zarr").exists(), "a failed store must not be left"
    for run in RUNS:
        assert (cluster / "results" / run / "summary.json").exists(), f"run {run} should have finished"


@pytest.mark.skipif(os.geteuid() != 0, reason="tests/setup_slurm.sh runs as root")
def test_setup_script_is_idempotent(slurm_cluster):
    before = Path("/run/slurm/slurmctld.pid").read_text()
    done = subprocess.run(["bash", str(REPO / "tests" / "setup_slurm.sh")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "starting" not in done.stdout and "writing" not in done.stdout, done.stdout
    assert Path("/run/slurm/slurmctld.pid").read_text() == before, "a running cluster must be left as it is"
    assert "idle" in done.stdout or "mixed" in done.stdout, done.stdout
    hostname = subprocess.run(["srun", "--mem=100", "hostname"], capture_output=True, text=True, timeout=120)
    assert hostname.returncode == 0 and hostname.stdout.strip() == os.uname().nodename, hostname.stderr
