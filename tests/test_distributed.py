"""Dask distributed for real: the locate stage on a dask.distributed cluster
joined through a scheduler file (a scheduler and two workers on loopback,
started here as the facility would), and on workers that dask-jobqueue starts
as SLURM jobs (``compute.scheduler: slurm``). Both must give exactly the
features of a local run."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest

from conftest import skip_or_fail
from pipeline import locate
from pipeline.io.movie import write_movie
from pipeline.io.tables import read_table

pytestmark = pytest.mark.slow

# The real data's locate settings (1 µm spheres, 0.3509 µm/px, 24 fps)
LOCATE_PARAMS = {"diameter": 11, "minmass": 20}
LOCAL = {"scheduler": "synchronous"}


@pytest.fixture(scope="module")
def bulk_water_movie(tmp_path_factory, bulk_water_dir) -> Path:
    """The first 16 real frames as a movie store, 4 frames per shard (4 tasks)."""
    files = sorted(bulk_water_dir.glob("bulk_water_*.png"))[:16]
    # green channel, inverted: the spheres are dark on a bright background
    frames = np.stack([255 - iio.imread(f)[..., 1] for f in files]).astype(np.uint8)
    path = tmp_path_factory.mktemp("movie") / "movie.ome.zarr"
    write_movie(path, frames, pixel_size_um=0.3509, frame_interval_s=1 / 24, frames_per_shard=4)
    return path


@pytest.fixture(scope="module")
def local_features(bulk_water_movie, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("local") / "features.parquet"
    locate.run(bulk_water_movie, out, LOCATE_PARAMS, compute=LOCAL)
    features = read_table(out)
    assert len(features) > 16 * 5, "the real movie should give several features per frame"
    return features


def _wait_for(condition, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: {proc.args[:4]} exited with {proc.returncode}")
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not ready after {timeout} s")


@pytest.fixture(scope="module")
def scheduler_file_cluster(tmp_path_factory):
    """A dask scheduler and two single-thread workers on loopback, joined
    through a scheduler file, as `dask scheduler --scheduler-file` and
    `dask worker --scheduler-file` start them on a facility's nodes."""
    from distributed import Client

    root = tmp_path_factory.mktemp("dask")
    scheduler_file = root / "scheduler.json"
    common = ["--no-dashboard", "--scheduler-file", str(scheduler_file)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", *common],
            stdout=subprocess.DEVNULL, stderr=open(root / "scheduler.log", "w"),
        )
    ]  # fmt: skip
    try:
        _wait_for(scheduler_file.exists, 60, "dask scheduler", procs)
        for i in range(2):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "distributed.cli.dask_worker", "--host", "127.0.0.1", "--no-nanny",
                     "--nthreads", "1", "--name", f"worker-{i}", "--local-directory", str(root / f"w{i}"),
                     *common],
                    stdout=subprocess.DEVNULL, stderr=open(root / f"worker-{i}.log", "w"),
                )
            )  # fmt: skip
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield scheduler_file
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tasks_per_worker(scheduler_file: Path) -> dict[str, int]:
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
        return client.run(lambda dask_worker: dask_worker.state.executed_count)


def test_locate_through_a_scheduler_file_equals_local(
    bulk_water_movie, local_features, scheduler_file_cluster, tmp_path
):
    before = _tasks_per_worker(scheduler_file_cluster)
    out = tmp_path / "features.parquet"
    compute = {"scheduler": "scheduler_file", "scheduler_file": str(scheduler_file_cluster)}

    features = locate.run(bulk_water_movie, out, LOCATE_PARAMS, compute=compute)

    pd.testing.assert_frame_equal(read_table(out), local_features)
    pd.testing.assert_frame_equal(features.reset_index(drop=True), local_features)
    after = _tasks_per_worker(scheduler_file_cluster)
    ran = {worker: after[worker] - before.get(worker, 0) for worker in after}
    assert len(ran) == 2 and all(n > 0 for n in ran.values()), f"both workers should take tasks: {ran}"
    assert sum(ran.values()) >= 4, f"one task per shard at least (4 shards): {ran}"


def test_a_missing_scheduler_file_names_it(bulk_water_movie, tmp_path):
    missing = tmp_path / "nowhere" / "scheduler.json"
    with pytest.raises(FileNotFoundError, match="nowhere/scheduler.json"):
        locate.run(
            bulk_water_movie,
            tmp_path / "features.parquet",
            LOCATE_PARAMS,
            compute={"scheduler": "scheduler_file", "scheduler_file": str(missing)},
        )
    assert not (tmp_path / "features.parquet").exists()


def _slurm_jobs(name: str) -> dict[str, str]:
    """``{job id: state}`` of the SLURM jobs called ``name``, finished ones included."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--name", name, "--format=%i|%T"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return dict(line.split("|", 1) for line in listed.stdout.split())


def test_locate_on_dask_jobqueue_slurm_workers_equals_local(
    slurm_cluster, bulk_water_movie, local_features, tmp_path
):
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        skip_or_fail("dask-jobqueue is not installed (pip install 'trackflow[slurm]')")
    job_name = f"tf-dask-{uuid.uuid4().hex[:8]}"
    compute = {
        "scheduler": "slurm",
        "slurm": {
            "jobs": 2,
            "queue": slurm_cluster["partition"],
            "cores": 1,
            "processes": 1,
            "memory": "1GiB",
            "walltime": "00:10:00",
            "job_name": job_name,
            "python": sys.executable,  # the workers run this project's venv
            "log_directory": str(tmp_path / "logs"),
            "local_directory": str(tmp_path / "dask"),
            "scheduler_options": {"host": "127.0.0.1", "dashboard_address": ":0"},
        },
    }
    out = tmp_path / "features.parquet"

    locate.run(bulk_water_movie, out, LOCATE_PARAMS, compute=compute)

    pd.testing.assert_frame_equal(read_table(out), local_features)
    jobs = _slurm_jobs(job_name)
    assert len(jobs) == 2, f"two worker jobs should have been submitted to SLURM: {jobs}"
    # leaving the stage tears the cluster down: no worker job is left running
    _wait_for(
        lambda: not ({"RUNNING", "PENDING", "CONFIGURING"} & set(_slurm_jobs(job_name).values())),
        60,
        f"SLURM worker jobs {job_name} still running after the stage",
    )
    logs = list((tmp_path / "logs").glob("*.err"))
    assert logs, "the workers' SLURM job logs should be in the log directory"
    assert any("Starting Worker" in log.read_text() for log in logs), "no worker started in a SLURM job"


def test_a_worker_job_that_slurm_refuses_fails_the_stage(slurm_cluster, bulk_water_movie, tmp_path):
    """A wrong partition must stop the stage with SLURM's refusal, not leave
    it waiting forever for workers that will never come."""
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        skip_or_fail("dask-jobqueue is not installed (pip install 'trackflow[slurm]')")
    compute = {
        "scheduler": "slurm",
        "slurm": {
            "queue": "no-such-partition",
            "cores": 1,
            "memory": "1GiB",
            "python": sys.executable,
            "log_directory": str(tmp_path / "logs"),
            "scheduler_options": {"host": "127.0.0.1", "dashboard_address": ":0"},
        },
    }
    out = tmp_path / "features.parquet"
    with pytest.raises(RuntimeError, match=r"SLURM refused the Dask worker jobs(.|\n)*-p no-such-partition"):
        locate.run(bulk_water_movie, out, LOCATE_PARAMS, compute=compute)
    assert not out.exists()
