"""The compute layer: schedulers from the ``compute`` section, and frame
chunks mapped over a movie store, including through a real dask.distributed
cluster (a `dask scheduler` and a `dask worker` on loopback)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask
import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.compute import (
    DEFAULT_SCHEDULER,
    dask_scheduler,
    frame_ranges,
    map_frame_chunks,
    scheduler_workers,
)
from pipeline.io import MovieError, write_movie

SCHEMAS = Path(__file__).resolve().parents[1] / "workflow" / "schemas"


def frame_stats(frames: np.ndarray, first_frame: int, *, scale: float = 1.0) -> pd.DataFrame:
    """Per-frame numbers that depend on every pixel, tagged with the frame and the process."""
    return pd.DataFrame(
        {
            "frame": np.arange(first_frame, first_frame + len(frames), dtype=np.int64),
            "total": frames.reshape(len(frames), -1).sum(axis=1).astype(float) * scale,
            "pid": os.getpid(),
        }
    )


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    frames = np.random.default_rng(0).integers(0, 4000, size=(23, 24, 32), dtype=np.uint16)
    path = tmp_path_factory.mktemp("compute") / "movie.ome.zarr"
    write_movie(path, frames, frames_per_shard=8)
    return path, frames


# --- frame ranges -------------------------------------------------------------


def test_frame_ranges_default_to_one_shard_for_long_movies():
    ranges = frame_ranges(10_000, frames_per_shard=128, workers=2)
    assert ranges[0] == (0, 128) and ranges[-1] == (9984, 10_000)
    assert all(stop - start <= 128 for start, stop in ranges)


def test_frame_ranges_split_short_movies_so_every_worker_has_work():
    for n_frames, shard in ((40, 247), (21, 247), (300, 128)):
        ranges = frame_ranges(n_frames, frames_per_shard=shard, workers=2)
        assert len(ranges) == 2 * 4  # TASKS_PER_WORKER each
        assert ranges[0][0] == 0 and ranges[-1][1] == n_frames
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no gap
        sizes = [stop - start for start, stop in ranges]
        assert max(sizes) - min(sizes) <= 1  # equal work: no worker idles at the end
    assert frame_ranges(3, frames_per_shard=128, workers=2) == [(0, 1), (1, 2), (2, 3)]


def test_frame_ranges_honour_frames_per_task():
    assert frame_ranges(10, frames_per_shard=8, workers=4, frames_per_task=4) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError, match="frames_per_task"):
        frame_ranges(10, frames_per_shard=8, frames_per_task=0)


# --- schedulers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("compute", "threads", "expected"),
    [
        ({}, 2, DEFAULT_SCHEDULER),
        ({"scheduler": "threads"}, 3, "threads"),
        ({"scheduler": "processes"}, 2, "processes"),
        ({"scheduler": "synchronous"}, 4, "synchronous"),
        ({"scheduler": "processes"}, 1, "synchronous"),  # one worker: no pool to pay for
        ({"scheduler": "threads", "threads": 3}, None, "threads"),  # compute.threads without rule threads
    ],
)
def test_dask_scheduler_local_kinds(compute, threads, expected):
    with dask_scheduler(compute, threads) as how:
        assert how["scheduler"] == expected
        assert scheduler_workers(how) == (1 if expected == "synchronous" else threads or compute["threads"])
        (value,) = dask.compute(dask.delayed(sum)([1, 2, 3]), **how)
    assert value == 6


@pytest.mark.parametrize(
    ("compute", "error", "message"),
    [
        ({"scheduler": "gpu"}, ValueError, "compute.scheduler"),
        ({"schedular": "threads"}, ValueError, "schedular"),
        ({"scheduler": "address"}, ValueError, "compute.address"),
        ({"scheduler": "scheduler_file"}, ValueError, "compute.scheduler_file"),
        ({"scheduler": "scheduler_file", "scheduler_file": "/nonexistent/s.json"}, FileNotFoundError, "s.json"),
        ({"frames_per_task": -1}, ValueError, "frames_per_task"),
        ({"threads": 0}, ValueError, "compute.threads"),
    ],
)
def test_bad_compute_sections_are_errors_naming_the_key(compute, error, message):
    with pytest.raises(error, match=message):
        with dask_scheduler(compute, 2):
            pass


@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "processes"])
def test_map_frame_chunks_covers_every_frame_in_order(movie, scheduler):
    path, frames = movie
    result = map_frame_chunks(
        frame_stats, path, compute={"scheduler": scheduler}, threads=2, frames_per_task=5, scale=0.5
    )
    assert list(result["frame"]) == list(range(len(frames)))
    np.testing.assert_array_equal(result["total"], frames.reshape(len(frames), -1).sum(axis=1) * 0.5)
    pids = set(result["pid"])
    if scheduler == "processes":
        assert os.getpid() not in pids  # the work ran in worker processes
    else:
        assert pids == {os.getpid()}


def test_map_frame_chunks_takes_frames_per_task_from_compute(movie):
    path, frames = movie
    sizes = map_frame_chunks(
        lambda f, first: pd.DataFrame({"first": [first], "n": [len(f)]}),
        path,
        compute={"scheduler": "threads", "frames_per_task": 10},
        threads=2,
    )
    assert list(sizes["first"]) == [0, 10, 20] and list(sizes["n"]) == [10, 10, 3]


def test_chunk_kwargs_are_per_task_and_none_skips_a_range(movie):
    path, frames = movie
    result = map_frame_chunks(
        frame_stats,
        path,
        compute={"scheduler": "processes"},
        threads=2,
        frames_per_task=5,
        chunk_kwargs=lambda start, stop: None if start == 5 else {"scale": float(start)},
    )
    expected_frames = [f for f in range(len(frames)) if not 5 <= f < 10]
    assert list(result["frame"]) == expected_frames
    sums = frames.reshape(len(frames), -1).sum(axis=1)
    np.testing.assert_array_equal(result["total"], [sums[f] * (f // 5 * 5) for f in expected_frames])


def test_map_frame_chunks_names_an_unreadable_frame(tmp_path, movie):
    _, frames = movie
    path = tmp_path / "broken.ome.zarr"
    write_movie(path, frames[:8], frames_per_shard=8)
    shard = path / "0" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-(16 * 8 + 4) : -4]), dtype="<u8").reshape(8, 2)
    offset, size = (int(v) for v in index[6])
    data[offset : offset + size] = b"\x00" * size
    shard.write_bytes(bytes(data))
    with pytest.raises(MovieError, match="frame 6 cannot be read"):
        map_frame_chunks(frame_stats, path, compute={"scheduler": "threads"}, threads=2, frames_per_task=4)


def test_compute_schema_lists_the_compute_keys():
    schema = yaml.safe_load((SCHEMAS / "compute.schema.yaml").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert all(sub.get("description") and "default" in sub for sub in schema["properties"].values())
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"scheduler": "slurm", "slurm": {"cores": 8, "memory": "16GB", "jobs": 4}})
    assert not validator.is_valid({"scheduler": "gpu"})
    assert not validator.is_valid({"workers": 4})


# --- a real dask.distributed cluster ------------------------------------------------


def _dask_cli() -> str:
    beside = Path(sys.executable).with_name("dask")
    found = str(beside) if beside.exists() else shutil.which("dask")
    if not found:
        pytest.skip("the `dask` command line is not installed")
    return found


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` and one `dask worker` (one thread) on loopback."""
    dask_cmd = _dask_cli()
    workdir = tmp_path_factory.mktemp("cluster")
    scheduler_file = workdir / "scheduler.json"
    log = open(workdir / "cluster.log", "w")
    # the cluster imports this module by name to run frame_stats, as pytest does
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    processes = []
    try:
        processes.append(
            subprocess.Popen(
                [dask_cmd, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(scheduler_file)],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env,
            )
        )
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            assert processes[0].poll() is None, (workdir / "cluster.log").read_text()
            time.sleep(0.1)
        assert scheduler_file.exists(), "dask scheduler did not write its scheduler file"
        processes.append(
            subprocess.Popen(
                [dask_cmd, "worker", "--scheduler-file", str(scheduler_file), "--nworkers", "1",
                 "--nthreads", "1", "--no-dashboard", "--local-directory", str(workdir)],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env,
            )
        )
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        address = json.loads(scheduler_file.read_text())["address"]
        yield {"address": address, "scheduler_file": str(scheduler_file)}
    finally:
        for process in reversed(processes):  # workers first, then the scheduler
            _stop(process)
        log.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["address", "scheduler_file"])
def test_locate_through_a_distributed_cluster_equals_local(cluster, mode, tmp_path):
    from pipeline.locate import locate_movie

    rng = np.random.default_rng(5)
    frames = rng.normal(100, 5, size=(6, 64, 64))
    yy, xx = np.mgrid[:64, :64]
    for t in range(len(frames)):
        for y, x in rng.uniform(8, 56, size=(6, 2)):
            frames[t] += 800 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.5)
    path = tmp_path / "movie.ome.zarr"
    write_movie(path, frames.astype(np.uint16))
    options = {"diameter": 7, "minmass": 300}
    local = locate_movie(path, compute={"scheduler": "synchronous"}, **options)
    compute = {"scheduler": mode, mode: cluster[mode]}
    remote = locate_movie(path, compute=compute, frames_per_task=2, **options)
    assert len(local) >= 6 * 5
    pd.testing.assert_frame_equal(remote, local)
    # and the tasks really ran in the worker process
    pids = map_frame_chunks(frame_stats, path, compute=compute, frames_per_task=2)["pid"]
    assert os.getpid() not in set(pids)
