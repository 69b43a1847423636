"""Locate while acquiring (acquire.live_locate): the features a follower
locates from the store's shards as they are written are exactly those the
locate stage computes from the finished store, and the locate stage adopts
them only when they were made from that store with its own parameters.
Real writer processes, real stores, a real follower process."""

import pandas as pd
import pytest

from pipeline.acquire import CameraFrame, SimulatedCamera, acquire
from pipeline.io import read_table, table_metadata
from pipeline.io.movie import open_movie
from pipeline.live.locate import (
    adopt_live_features,
    live_features_path,
    live_locate,
    locate_or_adopt,
    locate_params_sha256,
)
from pipeline.locate import locate_movie

SOURCE = dict(shape=(64, 64), n_frames=40, n_particles=8, seed=11, frame_interval_s=0.01)
PARAMS = {"diameter": 7, "minmass": 50}
SYNC = {"scheduler": "synchronous"}


class GappyCamera(SimulatedCamera):
    """The simulated camera, losing frames 10, 11 and 25 (recorded as dropped)."""

    def frames(self):
        for frame in super().frames():
            if frame.seq not in (10, 11, 25):
                yield CameraFrame(frame.data, frame.seq, frame.t)


def from_the_store(store, params):
    options = {k: v for k, v in params.items() if k != "frames_per_task"}
    return locate_movie(store, compute=SYNC, **options)


@pytest.fixture(scope="module")
def acquired(tmp_path_factory):
    """One acquisition with frames dropped, located live (paced, so that the
    follower has frames to locate before the stream ends)."""
    store = tmp_path_factory.mktemp("live") / "movie.ome.zarr"
    with live_locate(store, PARAMS):
        acquire(GappyCamera(**SOURCE), store, frames_per_shard=8, rate_fps=40, report=False)
    return store


def test_live_features_are_those_of_the_store(acquired):
    side = live_features_path(acquired)
    assert side == acquired.parent / "movie.live_features.parquet" and side.is_file()
    movie = open_movie(acquired)
    assert movie.complete and sorted(movie.dropped_frames.tolist()) == [10, 11, 25]
    live = read_table(side)
    expected = from_the_store(acquired, PARAMS)
    assert len(expected) > 100 and not set(live["frame"]) & {10, 11, 25}
    pd.testing.assert_frame_equal(live, expected, check_exact=True)
    meta = table_metadata(side)["live"]
    assert meta["store_id"] == movie.attrs["store_id"]
    assert meta["params_sha256"] == locate_params_sha256(PARAMS)
    # located while the frames came (paced at 40 fps: a second of stream)
    assert meta["frames_located_before_the_store_was_complete"] > 0
    assert meta["seconds_after_the_store_was_complete"] < 5


def test_the_locate_stage_adopts_them(acquired, tmp_path):
    out = tmp_path / "features.parquet"
    features = locate_or_adopt(acquired, out, PARAMS, compute=SYNC)
    meta = table_metadata(out)
    assert meta["stage"] == "locate" and meta["adopted"]["from"] == str(live_features_path(acquired))
    assert meta["params"]["minmass"] == 50 and meta["n_frames"] == 40 and meta["dropped_frames"] == [10, 11, 25]
    pd.testing.assert_frame_equal(read_table(out), from_the_store(acquired, PARAMS), check_exact=True)
    assert len(features) == meta["n_features"]
    # frames_per_task cuts the work, not the features: still adopted
    assert adopt_live_features(acquired, {**PARAMS, "frames_per_task": 3})[0] is not None


def test_a_changed_parameter_locates_from_the_store(acquired, tmp_path):
    changed = {**PARAMS, "minmass": 120}
    features, why = adopt_live_features(acquired, changed)
    assert features is None and "locate parameters" in why
    out = tmp_path / "features.parquet"
    locate_or_adopt(acquired, out, changed, compute=SYNC)
    assert "adopted" not in table_metadata(out)
    pd.testing.assert_frame_equal(read_table(out), from_the_store(acquired, changed), check_exact=True)


def test_features_of_another_acquisition_are_not_adopted(acquired, tmp_path):
    """Negative control: the same frames acquired again make another store
    (a new store_id); the first one's live features beside it are refused."""
    again = tmp_path / "movie.ome.zarr"
    acquire(GappyCamera(**SOURCE), again, frames_per_shard=8, report=False)
    live_features_path(again).write_bytes(live_features_path(acquired).read_bytes())
    features, why = adopt_live_features(again, PARAMS)
    assert features is None and "store_id" in why


def test_switched_off_it_removes_stale_features(acquired, tmp_path):
    store = tmp_path / "movie.ome.zarr"
    live_features_path(store).write_bytes(live_features_path(acquired).read_bytes())
    with live_locate(store, PARAMS, enabled=False):
        acquire(SimulatedCamera(**SOURCE), store, report=False)
    assert not live_features_path(store).exists()
    assert adopt_live_features(store, PARAMS)[0] is None


def test_a_failed_acquisition_leaves_no_live_features(tmp_path):
    store = tmp_path / "movie.ome.zarr"
    with pytest.raises(RuntimeError, match="camera unplugged"):
        with live_locate(store, PARAMS):
            camera = SimulatedCamera(**SOURCE)
            frames = camera.frames

            def failing():
                for frame in frames():
                    if frame.seq == 20:
                        raise RuntimeError("camera unplugged")
                    yield frame

            camera.frames = failing
            acquire(camera, store, frames_per_shard=8, report=False)
    assert not live_features_path(store).exists()
    assert not open_movie(store).complete


def test_a_bad_locate_parameter_fails_before_acquiring(tmp_path):
    store = tmp_path / "movie.ome.zarr"
    with pytest.raises(ValueError, match="minmas"):
        with live_locate(store, {"diameter": 7, "minmas": 5}):
            raise AssertionError("the block must not run")
    assert not store.exists()


def test_no_features_located_still_matches(tmp_path):
    store = tmp_path / "movie.ome.zarr"
    params = {"diameter": 7, "minmass": 1e9}
    with live_locate(store, params):
        acquire(SimulatedCamera(**SOURCE), store, report=False)
    live = read_table(live_features_path(store))
    assert len(live) == 0
    pd.testing.assert_frame_equal(live, from_the_store(store, params), check_exact=True)


@pytest.mark.slow
def test_the_workflow_adopts_live_features_and_reruns_locate_from_the_store(tmp_path):
    """Real Snakemake: with acquire.live_locate the acquire job leaves the
    features beside the movie and the locate job adopts them; switching
    live_locate re-runs nothing; a changed locate parameter re-runs locate
    alone (not acquire), which then locates from the store."""
    from test_workflow import SIMULATED, edit_yaml, planned_jobs, snakemake, write_config

    config = write_config(tmp_path)
    edit_yaml(config, "acquire", "live_locate", True)
    (tmp_path / "config" / "runs.tsv").write_text(
        f"run\tsource\tgroup\tsettings\toverrides\nr\tsimulated\t\t{SIMULATED % (150, 3)}\t\n"
    )
    target = "results/r/features.parquet"
    done = snakemake(tmp_path, target)
    assert done.returncode == 0, done.stdout + done.stderr
    store = tmp_path / "results" / "r" / "movie.ome.zarr"
    locate = {k: v for k, v in yaml_section(config, "locate").items()}
    features = tmp_path / target
    meta = table_metadata(features)
    assert meta["adopted"]["from"] == "results/r/movie.live_features.parquet"
    pd.testing.assert_frame_equal(read_table(features), from_the_store(store, locate), check_exact=True)

    edit_yaml(config, "acquire", "live_locate", False)
    assert planned_jobs(tmp_path, target) == {}
    edit_yaml(config, "acquire", "live_locate", True)

    edit_yaml(config, "locate", "minmass", locate["minmass"] + 100)
    assert planned_jobs(tmp_path, target) == {"locate": ["r"]}
    done = snakemake(tmp_path, target)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "adopted" not in table_metadata(features)
    changed = {**locate, "minmass": locate["minmass"] + 100}
    pd.testing.assert_frame_equal(read_table(features), from_the_store(store, changed), check_exact=True)
    log = (tmp_path / "results" / "logs" / "locate" / "r.log").read_text()
    assert "locate parameters (SHA-256)" in log


def yaml_section(config, section):
    from pipeline.io.config import load_config

    return load_config(config)[section]


def test_an_interrupted_stream_ends_the_follower_without_features(tmp_path):
    """An incomplete store (the publisher vanished: the writer's timeout)
    comes back without an error; the follower must not wait for it forever."""
    from pipeline.acquire import publish, record

    import threading

    store = tmp_path / "movie.ome.zarr"
    ready = threading.Event()
    endpoint = {}

    def writer():
        record("tcp://127.0.0.1:*", store, timeout_s=1.0, start_timeout_s=10,
               on_ready=lambda e: (endpoint.setdefault("e", e), ready.set()))

    with live_locate(store, PARAMS):
        thread = threading.Thread(target=writer)
        thread.start()
        ready.wait(10)
        camera = SimulatedCamera(**SOURCE)
        publish(camera.frames(), endpoint["e"], metadata=camera.settings, max_frames=20, end=False, linger_s_max=5)
        thread.join(30)
    assert not open_movie(store).complete
    assert not live_features_path(store).exists()


def test_shards_of_a_second_while_locating_live(tmp_path):
    """shard_seconds caps a shard at that much camera time (frame interval 0.01 s here),
    unless frames_per_shard is given; the frames are the same."""
    store = tmp_path / "movie.ome.zarr"
    acquire(SimulatedCamera(**SOURCE), store, shard_seconds=0.25, report=False)
    assert open_movie(store).frames_per_shard == 25
    again = tmp_path / "again.ome.zarr"
    acquire(SimulatedCamera(**SOURCE), again, shard_seconds=0.25, frames_per_shard=8, report=False)
    assert open_movie(again).frames_per_shard == 8
    assert (open_movie(store).frames() == open_movie(again).frames()).all()


def test_trackflow_acquire_live_locate(tmp_path):
    from pipeline.cli import main

    config = tmp_path / "config.yaml"
    config.write_text("locate: {diameter: 7, minmass: 50}\n")
    out = tmp_path / "movie.ome.zarr"
    args = ["acquire", "simulated", "-s", "n_frames=12", "-s", "shape=[48, 64]", "-s", "seed=2", "-o", str(out)]
    assert main([*args, "--quiet", "--live-locate", "--config", str(config)]) == 0
    assert open_movie(out).frames_per_shard == 30  # a second of frames at the simulator's 1/30 s
    pd.testing.assert_frame_equal(
        read_table(live_features_path(out)), from_the_store(out, PARAMS), check_exact=True
    )


def test_the_follower_stops_when_its_acquisition_dies(tmp_path):
    """A follower whose parent is killed outright (SIGKILL, no clean-up)
    must not poll for a store that will never be complete, even when the
    parent dies before the follower has finished importing (CI met that
    race: the follower, adopted by then, took its new parent for its own)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    store = tmp_path / "movie.ome.zarr"
    script = (
        "import json, os, subprocess, sys, time; from pipeline.live.locate import _CHILD; "
        f"config = json.dumps({{'store': {str(store)!r}, 'params': {PARAMS!r}, 'parent_pid': os.getpid()}}); "
        "p = subprocess.Popen([sys.executable, '-c', _CHILD, config]); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)  # at once: the follower is still importing
    parent.wait()
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        try:
            os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the follower outlived its acquisition")
