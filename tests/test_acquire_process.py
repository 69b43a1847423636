"""The writer in its own process: run(), interruptions, the command line."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from pipeline.acquire import Publisher, WriterProcess, acquire, publish, run
from pipeline.io.movie import MovieError, open_movie
from pipeline.io.tables import read_table, table_metadata

META = {"pixel_size_um": 0.1, "frame_interval_s": 0.02}


def frames_on_disk(path):
    """frames_written as published in the store's metadata (0 until the first shard)."""
    try:
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]["trackflow"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return 0
    return attrs.get("frames_written", 0)


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_run_simulated_writes_movie_and_truth(tmp_path):
    output = tmp_path / "sim1" / "movie.ome.zarr"
    source = {"kind": "simulated", "shape": [48, 64], "n_frames": 12, "seed": 4, "diameters_nm": [100]}
    params = {"clevel": 5, "hwm": 8, "frames_per_shard": 5, "timeout_s": 20}
    run(source, output, params, truth=output.parent / "truth.parquet")
    movie = open_movie(output)
    assert movie.complete and len(movie) == 12 and movie.frames_per_shard == 5
    from pipeline.simulate import simulate_movie

    expected, truth, meta = simulate_movie((48, 64), 12, seed=4, diameters_nm=[100])
    np.testing.assert_array_equal(movie.frames(), expected)
    assert movie.pixel_size_um == tuple(meta["pixel_size_um"])
    assert movie.attrs["temperature_K"] == meta["temperature_K"]
    assert movie.attrs["viscosity_Pa_s"] == pytest.approx(meta["viscosity_Pa_s"])
    assert movie.attrs["run"] == "sim1" and movie.attrs["acquisition"]["hwm"] == 8
    table = read_table(output.parent / "truth.parquet", required=["frame", "y", "x", "particle", "diameter_nm"])
    assert len(table) == len(truth)
    provenance = table_metadata(output.parent / "truth.parquet")
    assert provenance["stage"] == "acquire" and provenance["params"] == params
    # run() replaces an existing store (Snakemake already removed it; a rerun by hand must not fail)
    run(source, output, params, truth=output.parent / "truth.parquet")
    assert open_movie(output).complete


def test_run_rejects_unknown_parameters_and_source_keys(tmp_path):
    source = {"kind": "simulated", "n_frames": 3}
    with pytest.raises(ValueError, match="'hwn'"):
        run(source, tmp_path / "m.ome.zarr", {"hwn": 4})
    with pytest.raises(ValueError, match="acquire.transport"):
        run(source, tmp_path / "m.ome.zarr", {"transport": "udp"})
    with pytest.raises(ValueError, match="'pixel_size_um'"):
        run({"kind": "tiff", "path": "x.tif", "frame_interval_s": 1}, tmp_path / "m.ome.zarr", {})
    assert not (tmp_path / "m.ome.zarr").exists()


def test_volumes_from_zarr_over_tcp(tmp_path):
    volumes = np.random.default_rng(0).integers(0, 60000, size=(5, 4, 16, 20), dtype=np.uint16)
    zarr.create_array(str(tmp_path / "v.zarr"), data=volumes, chunks=(2, 4, 16, 20))
    source = {"kind": "zarr", "path": str(tmp_path / "v.zarr"), "pixel_size_um": [0.4, 0.1, 0.1], "frame_interval_s": 0.5}
    movie = acquire(source, tmp_path / "v.ome.zarr", transport="tcp", frames=4)
    assert movie.complete and movie.axes == ("t", "z", "y", "x")
    assert movie.pixel_size_um == (0.4, 0.1, 0.1)
    np.testing.assert_array_equal(movie.frames(), volumes[:4])
    assert movie.attrs["acquisition"]["endpoint"].startswith("tcp://127.0.0.1:")
    assert movie.attrs["frames_expected"] == 4


def test_existing_output_needs_overwrite(tmp_path):
    (tmp_path / "m.ome.zarr").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        acquire({"kind": "simulated", "n_frames": 2}, tmp_path / "m.ome.zarr")


def _stream(n, shape=(32, 48)):
    return np.random.default_rng(7).integers(0, 65535, size=(n, *shape), dtype=np.uint16)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_killed_writer_leaves_a_readable_store(tmp_path, sig):
    """Kill the writer process mid-stream: the store opens, says complete
    false, and the frames on disk are the frames sent (SIGTERM, SIGHUP,
    SIGINT: all received, the last partial shard included)."""
    output = tmp_path / "k.ome.zarr"
    frames = _stream(10)
    writer = WriterProcess("tcp://127.0.0.1:*", output, frames_per_shard=4, timeout_s=30)
    publisher = Publisher(writer.endpoint, run="k", alive=writer.alive, send_timeout_s=20)
    try:
        publisher.start(META, frames_expected=40)
        for i, frame in enumerate(frames):
            publisher.send(frame, i, i * 0.02)
        wait_for(lambda: frames_on_disk(output) >= 8)  # two whole shards on disk
        time.sleep(0.3)  # frames 8 and 9 received, still buffered
        os.kill(writer.pid, sig)
        writer.wait(30)
    finally:
        publisher.close(linger_s=0)
        writer.terminate()
    movie = open_movie(output)
    assert not movie.complete
    if sig == signal.SIGKILL:
        assert len(movie) >= 8 and movie.attrs["frames_written"] == len(movie)
    else:
        assert len(movie) == 10 and movie.attrs["frames_written"] == 10
        assert signal.Signals(sig).name in movie.attrs["interrupted"]
    np.testing.assert_array_equal(movie.frames(), frames[: len(movie)])


def test_acquire_raises_when_the_writer_dies(tmp_path):
    """A publisher whose writer vanished must not block forever."""
    import psutil

    output = tmp_path / "d.ome.zarr"

    def frames_then_kill_the_writer():
        for i, frame in enumerate(_stream(400)):
            if i == 5:
                wait_for(lambda: frames_on_disk(output) >= 4)
                # the newest child: earlier tests may have left others (pools, servers)
                writer = max(psutil.Process().children(), key=lambda p: p.create_time())
                writer.kill()
            yield frame

    with pytest.raises(MovieError, match="writer process stopped"):
        acquire(_Frames(frames_then_kill_the_writer), output, frames_per_shard=4, hwm=2)
    movie = open_movie(output)
    assert not movie.complete and len(movie) >= 4


class _Frames:
    """A minimal camera (the Camera protocol) over a generator function."""

    def __init__(self, make):
        self.make = make
        self.settings = dict(META)

    def open(self):
        pass

    def frames(self):
        return self.make()

    def close(self):
        pass


def test_empty_source_is_an_error(tmp_path):
    with pytest.raises(MovieError, match="before any valid frame"):
        acquire(_Frames(lambda: iter(())), tmp_path / "empty.ome.zarr")
    assert not (tmp_path / "empty.ome.zarr").exists()


def _trackflow(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_cli_acquire_shows_progress(tmp_path):
    proc = _trackflow(
        "acquire", "simulated", "-s", "shape=[40, 40]", "-s", "n_frames=30", "-s", "seed=1",
        "--frames", "20", "-o", str(tmp_path / "c.ome.zarr"), "--set", "frames_per_shard=8",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "20/20 frames" in err and "fps" in err and "MB/s" in err and "dropped 0" in err
    movie = open_movie(tmp_path / "c.ome.zarr")
    assert movie.complete and len(movie) == 20 and movie.frames_per_shard == 8
    again = _trackflow("acquire", "simulated", "-o", str(tmp_path / "c.ome.zarr"))
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2 and "overwrite" in err


def test_cli_record_writes_what_a_camera_process_publishes(tmp_path):
    output = tmp_path / "r.ome.zarr"
    import socket

    with socket.socket() as s:  # a free port for the recorder
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    proc = _trackflow(
        "record", "--endpoint", endpoint, "-o", str(output), "--pixel-size-um", "0.5",
        "--frame-interval-s", "0.1", "--metadata", '{"temperature_K": 300}', "--start-timeout", "60",
    )
    try:
        frames = _stream(6)
        # a bare camera: no start message, its own run name
        stats = publish(frames, endpoint, run="cam", send_timeout_s=60)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert stats.frames_sent == 6
    assert proc.returncode == 0, err
    assert "6 frames written" in err and "complete" in err
    movie = open_movie(output)
    np.testing.assert_array_equal(movie.frames(), frames)
    assert movie.pixel_size_um == (0.5, 0.5) and movie.attrs["temperature_K"] == 300


@pytest.mark.parametrize("how", ["ctrl-c", "hangup", "writer-first", "publisher-killed"])
def test_interrupted_acquisition_keeps_what_arrived(tmp_path, how):
    """Ctrl-C (SIGINT to the whole process group), a closed terminal (SIGHUP
    to the group) or a publisher killed outright: the writer flushes what it
    received, complete false. ``writer-first``: the writer acts on Ctrl-C
    before the publisher does (a race CI met; here forced by signalling the
    writer alone): still an interruption, exit status 130, not a failure."""
    import psutil

    from pipeline.simulate import NTASimulator

    output = tmp_path / "x.ome.zarr"
    proc = _trackflow(
        "acquire", "simulated", "-s", "shape=[32, 32]", "-s", "n_frames=5000", "-s", "seed=2",
        "-o", str(output), "--quiet",
        "--set", "rate_fps=40", "--set", "frames_per_shard=4", "--set", "timeout_s=1",
        start_new_session=True,
    )
    try:
        wait_for(lambda: frames_on_disk(output) >= 8, timeout=60)
        (writer,) = psutil.Process(proc.pid).children()
        if how in ("ctrl-c", "hangup", "writer-first"):
            if how == "writer-first":
                os.kill(writer.pid, signal.SIGINT)
            else:
                os.killpg(proc.pid, signal.SIGINT if how == "ctrl-c" else signal.SIGHUP)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 130, err
            assert "interrupted" in err and "stopped during the stream" not in err
        else:
            proc.kill()
            proc.wait(30)
        writer.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    movie = open_movie(output)
    assert not movie.complete and movie.attrs["frames_expected"] == 5000
    assert len(movie) >= 8 and movie.attrs["frames_written"] == len(movie) and movie.attrs["dropped"] == []
    reason = {"ctrl-c": "signal SIGINT", "hangup": "signal SIGHUP", "writer-first": "signal SIGINT",
              "publisher-killed": "no message for 1 s"}[how]
    assert reason in movie.attrs["interrupted"]
    sim = NTASimulator(shape=(32, 32), n_frames=len(movie), seed=2)
    np.testing.assert_array_equal(movie.frames(), np.stack(list(sim.frames())))


def test_writer_whose_progress_output_closes_keeps_what_arrived(tmp_path):
    """``trackflow record`` whose stderr (the progress line) is a pipe closed
    mid-run: the writer closes the store with every frame received, the
    last partial shard included, and says why it stopped."""
    import socket

    output = tmp_path / "p.ome.zarr"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    proc = _trackflow(
        "record", "--endpoint", endpoint, "-o", str(output), "--start-timeout", "60", "--set", "frames_per_shard=4",
    )
    proc.stderr.close()  # nobody reads the progress line any more
    frames = _stream(11)
    publisher = Publisher(endpoint, run="p", send_timeout_s=20)
    try:
        publisher.start(META, frames_expected=40)
        for i in range(10):
            publisher.send(frames[i], i, i * 0.02)
        wait_for(lambda: frames_on_disk(output) >= 8)
        time.sleep(5.5)  # a log's progress line is written every 5 s: the next one fails
        publisher.send(frames[10], 10, 0.2)
        proc.wait(30)
    finally:
        publisher.close(linger_s=0)
        if proc.poll() is None:
            proc.kill()
    movie = open_movie(output)
    assert not movie.complete and "progress output was closed" in movie.attrs["interrupted"]
    assert len(movie) == 11 and movie.attrs["frames_written"] == 11 and movie.attrs["dropped"] == []
    np.testing.assert_array_equal(movie.frames(), frames)


def test_cli_acquire_simulated_frames_sets_the_length(tmp_path):
    """``--frames 120`` of a simulated source without ``n_frames``: 120
    frames, not the simulator's default 100."""
    proc = _trackflow(
        "acquire", "simulated", "-s", "shape=[16, 16]", "--frames", "120", "--quiet",
        "-o", str(tmp_path / "s.ome.zarr"),
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    movie = open_movie(tmp_path / "s.ome.zarr")
    assert movie.complete and len(movie) == 120 and movie.attrs["frames_expected"] == 120


def test_publish_says_the_writer_is_gone_within_its_send_timeout(tmp_path):
    """A bare publish() (no ``alive`` check) to a writer killed mid-stream
    raises within its send timeout, saying the writer is gone."""
    from pipeline.acquire import StreamError
    from pipeline.acquire.stream import DEFAULT_SEND_TIMEOUT_S

    assert DEFAULT_SEND_TIMEOUT_S == 30  # publish() never blocks forever by default
    output = tmp_path / "g.ome.zarr"
    writer = WriterProcess("tcp://127.0.0.1:*", output, frames_per_shard=4, timeout_s=30)
    raised_at = []

    def frames():
        frame = _stream(1, shape=(64, 64))[0]
        for i in range(100000):
            if i == 5:
                wait_for(lambda: frames_on_disk(output) >= 4)
                os.kill(writer.pid, signal.SIGKILL)
                writer.wait(30)
                raised_at.append(time.monotonic())
            yield frame

    try:
        with pytest.raises(StreamError, match="writer at tcp://127.0.0.1:.* is gone"):
            publish(frames(), writer.endpoint, metadata=META, send_timeout_s=2)
    finally:
        writer.terminate()
    assert time.monotonic() - raised_at[0] < 2 + 5  # the timeout, plus the frames the socket still queued


def test_acquire_with_keys_records_over_curve(tmp_path):
    """acquire(keys=...): the writer process and the publisher speak CURVE."""
    from pipeline.acquire.security import create_keys

    create_keys(tmp_path / "keys")
    source = {"kind": "simulated", "shape": [24, 24], "n_frames": 6, "seed": 3}
    movie = acquire(source, tmp_path / "c.ome.zarr", transport="tcp", keys=tmp_path / "keys")
    assert movie.complete and len(movie) == 6 and not movie.attrs.get("rejected")
    from pipeline.simulate import NTASimulator

    np.testing.assert_array_equal(movie.frames(), np.stack(list(NTASimulator(shape=(24, 24), n_frames=6, seed=3).frames())))
