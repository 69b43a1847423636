"""Publisher -> writer over real ZeroMQ sockets into real stores on disk.

The writer (``record``) runs in a thread here so that each stream costs
milliseconds; bad messages are sent with raw zmq sockets.
"""

import json
import os
import queue
import re
import threading
import time

import numpy as np
import pytest
import zmq

from pipeline.acquire import CameraFrame, Publisher, paced, preview, publish, record, wire
from pipeline.io.movie import MovieError

META = {"pixel_size_um": 0.25, "frame_interval_s": 0.01, "exposure_s": 0.005, "temperature_K": 295.0}


class Recorder:
    """``record`` in a background thread, bound to a free loopback port."""

    def __init__(self, output, **kwargs):
        self._ready: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.result = None
        self.error = None
        kwargs.setdefault("timeout_s", 5.0)
        kwargs.setdefault("start_timeout_s", 10.0)

        def target():
            try:
                self.result = record(
                    "tcp://127.0.0.1:*", output, on_ready=self._ready.put, stop=self.stop, **kwargs
                )
            except BaseException as exc:  # handed to the test
                self.error = exc
                self._ready.put(None)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        self.endpoint = self._ready.get(timeout=10)
        if self.endpoint is None:
            raise self.error

    def join(self, timeout=30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the writer did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def raw_push(endpoint):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    return ctx, sock


def make_frames(n, shape=(24, 32), dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    if info is not None:
        return rng.integers(info.min, info.max, size=(n, *shape), dtype=dtype, endpoint=True)
    return rng.normal(size=(n, *shape)).astype(dtype)


def frame_parts(seq, frame, run="r", t=None):
    header = wire.encode_frame_header(seq, seq * 0.01 if t is None else t, frame.shape, frame.dtype, run)
    return [header, np.ascontiguousarray(frame)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    frames = make_frames(13, dtype=dtype)
    rec = Recorder(tmp_path / "m.ome.zarr", frames_per_shard=4)
    stats = publish(frames, rec.endpoint, run="r", metadata=META, frames_expected=13)
    movie = rec.join()
    assert stats.frames_sent == 13 and stats.ended
    assert movie.complete and movie.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(movie.frames(), frames)
    assert movie.attrs["frames_written"] == 13 and movie.attrs["dropped"] == []
    assert movie.attrs["rejected"] == {}


def test_metadata_and_timestamps(tmp_path):
    frames = make_frames(6)
    stamps = [100.0 + 0.5 * i for i in range(6)]
    rec = Recorder(tmp_path / "m.ome.zarr", acquisition={"clevel": 5})
    publish(
        (CameraFrame(f, i, t) for i, (f, t) in enumerate(zip(frames, stamps))),
        rec.endpoint,
        run="run7",
        metadata={**META, "source": "test camera", "gain": 2},
        frames_expected=6,
    )
    movie = rec.join()
    np.testing.assert_array_equal(movie.timestamps(), stamps)
    assert movie.pixel_size_um == (0.25, 0.25) and movie.frame_interval_s == 0.01
    attrs = movie.attrs
    assert attrs["source"] == "test camera" and attrs["gain"] == 2
    assert attrs["exposure_s"] == 0.005 and attrs["temperature_K"] == 295.0
    # viscosity derived from the temperature, and said so
    assert attrs["viscosity_Pa_s"] == pytest.approx(0.000954, rel=0.01)
    assert "temperature" in attrs["viscosity_source"]
    assert attrs["frames_expected"] == 6 and attrs["frames_written"] == 6
    assert attrs["run"] == "run7" and attrs["acquisition"] == {"clevel": 5}
    assert attrs["complete"] is True and attrs["trackflow_version"]
    stream = attrs["stream"]
    assert stream["frames_received"] == 6 and stream["bytes_received"] == frames.nbytes
    assert stream["bytes_compressed"] > 0
    # the timestamps are an array beside the image, not JSON
    assert "timestamps" not in attrs


def test_volumes_round_trip(tmp_path):
    frames = make_frames(5, shape=(3, 10, 12))
    rec = Recorder(tmp_path / "v.ome.zarr", frames_per_shard=2)
    publish(frames, rec.endpoint, run="r", metadata={**META, "pixel_size_um": [0.5, 0.1, 0.1]})
    movie = rec.join()
    assert movie.axes == ("t", "z", "y", "x")
    assert movie.pixel_size_um == (0.5, 0.1, 0.1)
    np.testing.assert_array_equal(movie.frames(), frames)


def test_gap_in_seq_is_recorded_as_dropped(tmp_path):
    frames = make_frames(8)
    sent = [0, 1, 2, 4, 5, 7]  # 3 and 6 never arrive; 8 and 9 are lost at the end
    rec = Recorder(tmp_path / "g.ome.zarr", frames_per_shard=3)
    publisher = Publisher(rec.endpoint, run="r")
    publisher.start(META)
    for seq in sent:
        publisher.send(frames[seq], seq, seq * 0.01)
    publisher.end(next_seq=10)
    publisher.close()
    movie = rec.join()
    assert movie.complete
    assert len(movie) == 10
    assert movie.attrs["dropped"] == [3, 6, 8, 9]
    assert movie.dropped_frames.tolist() == [3, 6, 8, 9]
    assert movie.attrs["frames_expected"] == 10 and movie.attrs["frames_written"] == 6
    data = movie.frames()
    for seq in sent:
        np.testing.assert_array_equal(data[seq], frames[seq])
    assert np.isnan(movie.timestamps()[[3, 6, 8, 9]]).all()


def test_first_seq_need_not_be_zero(tmp_path):
    frames = make_frames(3)
    rec = Recorder(tmp_path / "s.ome.zarr")
    publish((CameraFrame(f, 1000 + i) for i, f in enumerate(frames)), rec.endpoint, metadata=META)
    movie = rec.join()
    assert movie.attrs["first_seq"] == 1000 and len(movie) == 3 and movie.attrs["dropped"] == []
    np.testing.assert_array_equal(movie.frames(), frames)


GOOD = make_frames(4, seed=3)


def _bad_messages():
    """(name, reason, message parts) for each kind of bad message."""
    f = GOOD[0]
    big = json.dumps({"seq": 9, "t": 0, "shape": [10**6, 10**6], "dtype": "<u2", "run": "r"}).encode()
    return [
        ("malformed_json", "header", [b'{"seq": 2, "t":', f]),
        ("header_not_object", "header", [b"[2, 0]", f]),
        ("missing_key", "header", [json.dumps({"seq": 2, "t": 0, "shape": [24, 32], "run": "r"}).encode(), f]),
        ("short_buffer", "size", [wire.encode_frame_header(2, 0, f.shape, f.dtype, "r"), f.tobytes()[:-2]]),
        ("long_buffer", "size", [wire.encode_frame_header(2, 0, f.shape, f.dtype, "r"), f.tobytes() + b"xx"]),
        ("unknown_dtype", "dtype", [json.dumps({"seq": 2, "t": 0, "shape": [24, 32], "dtype": "O", "run": "r"}).encode(), f]),
        ("huge_shape", "shape", [big, b"tiny"]),
        ("shape_change", "format_change", frame_parts(2, make_frames(1, shape=(24, 31))[0])),
        ("dtype_change", "format_change", frame_parts(2, GOOD[0].astype(np.int32))),
        ("duplicate_seq", "duplicate_seq", frame_parts(1, GOOD[1])),
        ("out_of_order_seq", "out_of_order_seq", frame_parts(0, GOOD[0])),
        ("three_parts", "parts", [*frame_parts(2, GOOD[2]), b"extra"]),
        ("frame_without_buffer", "parts", [frame_parts(2, GOOD[2])[0]]),
        ("end_with_buffer", "parts", [wire.encode_end("r", 1, 2), b"x"]),
        ("other_run", "run", frame_parts(2, GOOD[2], run="another")),
        ("seq_jump", "seq_jump", frame_parts(10**9, GOOD[2])),
        # issue 14, finding 1: each of these killed the writer
        ("t_400_digits", "header", [f'{{"seq": 2, "t": {"9" * 400}, "shape": [24, 32], "dtype": "<u2", "run": "r"}}'.encode(), f]),
        ("t_5000_digits", "header", [f'{{"seq": 2, "t": {"9" * 5000}, "shape": [24, 32], "dtype": "<u2", "run": "r"}}'.encode(), f]),
        ("nested_100000", "header", [b"[" * 100_000 + b"]" * 100_000, f]),
        ("t_nan", "header", [b'{"seq": 2, "t": NaN, "shape": [24, 32], "dtype": "<u2", "run": "r"}', f]),
        # issue 14, finding 4: one forged number, within max_seq_gap or beyond an int64
        ("forged_seq_within_reach", "seq_jump", frame_parts(5000, GOOD[2])),
        ("seq_2_64", "header", [f'{{"seq": {2**64}, "t": 0, "shape": [24, 32], "dtype": "<u2", "run": "r"}}'.encode(), f]),
        ("forged_end_far_ahead", "seq_jump", [wire.encode_end("r", 2, 1_000_000)]),
        ("second_start", "unexpected", [wire.encode_start("r", META)]),
    ]


@pytest.mark.parametrize("name, reason, parts", _bad_messages(), ids=[m[0] for m in _bad_messages()])
def test_bad_message_is_counted_and_the_stream_goes_on(tmp_path, name, reason, parts):
    rec = Recorder(tmp_path / "b.ome.zarr", frames_per_shard=2)
    ctx, sock = raw_push(rec.endpoint)
    try:
        sock.send(wire.encode_start("r", META))
        for seq in (0, 1):
            sock.send_multipart(frame_parts(seq, GOOD[seq]))
        sock.send_multipart(parts)  # the bad one, mid-stream
        for seq in (2, 3):
            sock.send_multipart(frame_parts(seq, GOOD[seq]))
        sock.send(wire.encode_end("r", 4, 4))
        movie = rec.join()
    finally:
        sock.close()
        ctx.term()
    assert movie.attrs["rejected"] == {reason: 1}
    assert movie.complete and movie.attrs["dropped"] == []
    np.testing.assert_array_equal(movie.frames(), GOOD)


def test_huge_message_is_refused_before_it_is_buffered(tmp_path):
    # a part larger than max_frame_bytes is dropped by ZeroMQ itself (with
    # its connection); a well-behaved sender on another connection goes on
    rec = Recorder(tmp_path / "h.ome.zarr", max_frame_bytes=4096)
    ctx, rogue = raw_push(rec.endpoint)
    rogue.send_multipart([b'{"seq": 0, "t": 0, "shape": [64, 64], "dtype": "<u2", "run": "r"}', b"\0" * 8192])
    frames = make_frames(3)
    publish(frames, rec.endpoint, run="r", metadata=META)
    movie = rec.join()
    rogue.close()
    ctx.term()
    np.testing.assert_array_equal(movie.frames(), frames)


def test_interrupted_publisher_leaves_an_incomplete_store(tmp_path):
    frames = make_frames(5)
    rec = Recorder(tmp_path / "i.ome.zarr", timeout_s=0.5, frames_per_shard=2)
    publish(frames, rec.endpoint, run="r", metadata=META, frames_expected=10, end=False)
    movie = rec.join()
    assert not movie.complete
    assert "no message" in movie.attrs["interrupted"]
    assert movie.attrs["frames_written"] == 5 and movie.attrs["frames_expected"] == 10
    np.testing.assert_array_equal(movie.frames(), frames)


def test_stream_without_frames_is_an_error(tmp_path):
    rec = Recorder(tmp_path / "e.ome.zarr")
    ctx, sock = raw_push(rec.endpoint)
    sock.send(wire.encode_start("r", META))
    sock.send(b"{broken")
    sock.send(wire.encode_end("r", 0, 0))
    with pytest.raises(MovieError, match="before any valid frame.*header"):
        rec.join()
    sock.close()
    ctx.term()
    assert not (tmp_path / "e.ome.zarr").exists()


def test_missing_scale_is_an_error_naming_the_key(tmp_path):
    rec = Recorder(tmp_path / "n.ome.zarr")
    publish(make_frames(2), rec.endpoint, metadata={"frame_interval_s": 0.1}, send_timeout_s=5)
    with pytest.raises(MovieError, match="pixel_size_um"):
        rec.join()


def test_explicit_metadata_supplies_what_the_camera_does_not(tmp_path):
    rec = Recorder(tmp_path / "x.ome.zarr", metadata={"pixel_size_um": 0.3, "frame_interval_s": 0.05})
    ctx, sock = raw_push(rec.endpoint)  # a bare camera: no start message
    for seq in range(3):
        sock.send_multipart(frame_parts(seq, GOOD[seq], run="cam"))
    sock.send(wire.encode_end("cam", 3, 3))
    movie = rec.join()
    sock.close()
    ctx.term()
    assert movie.complete and movie.pixel_size_um == (0.3, 0.3) and movie.frame_interval_s == 0.05
    np.testing.assert_array_equal(movie.frames(), GOOD[:3])


def test_existing_store_needs_overwrite(tmp_path):
    out = tmp_path / "o.ome.zarr"
    rec = Recorder(out)
    publish(make_frames(2), rec.endpoint, metadata=META)
    rec.join()
    with pytest.raises(FileExistsError, match="overwrite"):
        Recorder(out)
    frames = make_frames(3, seed=5)
    rec = Recorder(out, overwrite=True)
    publish(frames, rec.endpoint, metadata=META)
    np.testing.assert_array_equal(rec.join().frames(), frames)


def test_pub_socket_feeds_a_live_preview(tmp_path):
    import trackpy  # noqa: F401  (imported before the viewer subscribes)

    from pipeline.simulate import NTASimulator

    sim = NTASimulator(shape=(64, 64), n_frames=12, n_particles=6, seed=2, photons=5000)
    frames = list(sim.frames())
    rec = Recorder(tmp_path / "p.ome.zarr")
    publisher = Publisher(rec.endpoint, run="r", pub_endpoint="tcp://127.0.0.1:*")
    counts: list = []
    viewer = threading.Thread(
        target=lambda: counts.extend(
            preview(publisher.pub_endpoint, every=2, diameter=7, minmass=200, timeout_s=10, out=open("/dev/null", "w"))
        ),
        daemon=True,
    )
    viewer.start()
    time.sleep(0.5)  # let the subscription reach the PUB socket
    publisher.start(sim.metadata)
    for i, frame in enumerate(frames):
        publisher.send(frame, i, i * 0.01)
        time.sleep(0.02)
    publisher.end()
    viewer.join(15)
    publisher.close()
    movie = rec.join()
    assert movie.complete and len(movie) == 12
    assert counts and all(seq % 2 == 0 for seq, _ in counts)
    assert all(n > 0 for _, n in counts)


def test_paced_camera_drops_what_it_cannot_deliver():
    frames = [CameraFrame(np.zeros((2, 2)), i) for i in range(30)]

    def slow_consumer():
        got = []
        for f in paced(frames, rate_fps=200, buffer_frames=2):
            got.append(f.seq)
            if f.seq == 5:
                time.sleep(0.05)  # 10 frame periods: the ring buffer of 2 overflows
        return got

    got = slow_consumer()
    assert got[:6] == [0, 1, 2, 3, 4, 5]
    assert len(got) < 30 and got == sorted(got) and got[-1] == 29
    t0 = time.perf_counter()
    assert [f.seq for f in paced(frames[:10], rate_fps=100)] == list(range(10))
    assert time.perf_counter() - t0 >= 0.085  # paced, not as fast as possible


def _send_stream(endpoint, messages):
    ctx, sock = raw_push(endpoint)
    try:
        for parts in messages:
            sock.send_multipart(parts if isinstance(parts, list) else [parts])
    finally:
        sock.close()
        ctx.term()


def test_forged_seq_does_not_poison_the_stream(tmp_path):
    """Issue 14, finding 4: seq 900,000 in a stream at 5, then 15 genuine
    frames and the genuine end; an end claiming a million ahead; seq 2^64."""
    frames = make_frames(21)
    rec = Recorder(tmp_path / "f.ome.zarr", frames_per_shard=4)
    messages = [wire.encode_start("r", META)] + [frame_parts(i, frames[i]) for i in range(6)]
    messages.append(frame_parts(900_000, frames[0]))
    messages += [frame_parts(i, frames[i]) for i in range(6, 21)]
    messages.append([wire.encode_end("r", 21, 1_000_021)])
    messages.append([f'{{"seq": {2**64}, "t": 0, "shape": [24, 32], "dtype": "<u2", "run": "r"}}'.encode(), frames[0]])
    messages.append([wire.encode_end("r", 21, 21)])
    _send_stream(rec.endpoint, messages)
    movie = rec.join()
    assert movie.complete and len(movie) == 21 and movie.attrs["dropped"] == []
    assert movie.attrs["rejected"] == {"seq_jump": 2, "header": 1}
    assert movie.dropped_frames.tolist() == []
    assert movie.attrs["frames_sent_mismatch"] is None
    np.testing.assert_array_equal(movie.frames(), frames)
    assert (tmp_path / "f.ome.zarr" / "zarr.json").stat().st_size < 100_000


def test_max_seq_gap_is_a_setting_and_genuine_gaps_are_dropped_frames(tmp_path):
    frames = make_frames(8)
    rec = Recorder(tmp_path / "g.ome.zarr", max_seq_gap=3)
    sent = [0, 1, 4, 5, 9, 10]  # a gap of 3 is within reach, one of 4 is not
    _send_stream(rec.endpoint, [wire.encode_start("r", META)] + [frame_parts(s, frames[s % 8]) for s in sent]
                 + [[wire.encode_end("r", 6, 6)]])
    movie = rec.join()
    assert movie.attrs["dropped"] == [2, 3] and len(movie) == 6
    assert movie.attrs["rejected"] == {"seq_jump": 2}
    np.testing.assert_array_equal(movie.frames()[[0, 1, 4, 5]], frames[[0, 1, 4, 5]])


def test_frames_sent_disagreement_is_recorded(tmp_path):
    frames = make_frames(3)
    rec = Recorder(tmp_path / "s.ome.zarr")
    _send_stream(rec.endpoint, [wire.encode_start("r", META)] + [frame_parts(i, frames[i]) for i in range(3)]
                 + [[wire.encode_end("r", 7, 3)]])
    movie = rec.join()
    assert movie.complete and movie.attrs["frames_sent"] == 7 and movie.attrs["frames_received"] == 3
    assert "says 7 frames were sent, but 3 were received" in movie.attrs["frames_sent_mismatch"]


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"temperature_K": "hot"}, "temperature_K"),
        ({"pixel_size_um": float("nan")}, "pixel_size_um"),
        ({"pixel_size_um": float("inf")}, "pixel_size_um"),
        ({"frame_interval_s": True}, "frame_interval_s"),
    ],
)
def test_bad_start_metadata_is_rejected_naming_the_key(tmp_path, bad, key, caplog):
    """Issue 14, finding 2: the writer keeps waiting for a valid start message."""
    bad_start = json.dumps({"start": True, "run": "r", "metadata": {**META, **bad}}).encode()
    rec = Recorder(tmp_path / "m.ome.zarr")
    with caplog.at_level("WARNING", logger="trackflow.acquire"):
        _send_stream(rec.endpoint, [bad_start, wire.encode_start("r", META)]
                     + [frame_parts(i, GOOD[i]) for i in range(4)] + [[wire.encode_end("r", 4, 4)]])
        movie = rec.join()
    assert movie.complete and movie.attrs["rejected"] == {"metadata": 1}
    assert movie.attrs["temperature_K"] == 295.0 and movie.frame_interval_s == 0.01
    np.testing.assert_array_equal(movie.frames(), GOOD)
    assert f"'{key}'" in caplog.text and "metadata" in caplog.text


def test_a_stream_whose_only_start_is_bad_ends_with_an_error_naming_the_key(tmp_path):
    bad_start = json.dumps({"start": True, "run": "r", "metadata": {**META, "pixel_size_um": float("nan")}}).encode()
    rec = Recorder(tmp_path / "m.ome.zarr")
    _send_stream(rec.endpoint, [bad_start, frame_parts(0, GOOD[0])])
    with pytest.raises(MovieError, match="start message was rejected.*'pixel_size_um'"):
        rec.join()
    assert not (tmp_path / "m.ome.zarr").exists()


# -- who may send: loopback, ipc permissions, CURVE ------------------------


def test_non_loopback_bind_without_keys_is_an_error_naming_the_endpoint(tmp_path):
    for endpoint in ("tcp://0.0.0.0:5999", "tcp://*:5999", "tcp://eth0:5999"):
        with pytest.raises(ValueError, match=f"{re.escape(endpoint)} is not a loopback or ipc endpoint.*--insecure"):
            record(endpoint, tmp_path / "m.ome.zarr", start_timeout_s=0.1)
    with pytest.raises(ValueError, match="PUB socket: tcp://0.0.0.0:5998 is not a loopback"):
        Publisher("tcp://127.0.0.1:5999", pub_endpoint="tcp://0.0.0.0:5998")
    assert not (tmp_path / "m.ome.zarr").exists()


def test_ipc_socket_is_owner_only(tmp_path):
    from pipeline.acquire import _loopback_endpoint

    endpoint, folder = _loopback_endpoint("ipc")
    try:
        assert folder.stat().st_mode & 0o777 == 0o700 and endpoint == f"ipc://{folder / 'writer.sock'}"
    finally:
        folder.rmdir()
    modes = []
    stop = threading.Event()

    def ready(bound):  # the socket file as a peer would first find it
        modes.append(os.stat(bound[len("ipc://"):]).st_mode)
        stop.set()

    with pytest.raises(MovieError, match="before any valid frame"):
        record(f"ipc://{tmp_path / 'w.sock'}", tmp_path / "m.ome.zarr", start_timeout_s=10, stop=stop, on_ready=ready)
    assert modes and modes[0] & 0o777 == 0o600


def _curve_push(endpoint, keys, client_keypair=None):
    """A raw PUSH socket speaking CURVE to the writer: with the given client
    key pair (default: the authorised one)."""
    import zmq.auth

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    public, secret = client_keypair or zmq.auth.load_certificate(keys / "client.key_secret")
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_serverkey = zmq.auth.load_certificate(keys / "server.key")[0]
    sock.connect(endpoint)
    return ctx, sock


def test_curve_refuses_unauthenticated_senders_and_records_authenticated_ones(tmp_path):
    from pipeline.acquire.security import create_keys

    keys = tmp_path / "keys"
    create_keys(keys)
    rec = Recorder(tmp_path / "m.ome.zarr", keys=keys, frames_per_shard=4)  # CURVE on loopback, forced by keys
    intruders = [raw_push(rec.endpoint), _curve_push(rec.endpoint, keys, client_keypair=zmq.curve_keypair())]
    forged = make_frames(3, seed=9)
    for _, sock in intruders:  # no CURVE at all, and CURVE with a key nobody authorised
        for seq, frame in enumerate(forged):
            sock.send_multipart(frame_parts(seq, frame, run="r"), flags=zmq.NOBLOCK)
    time.sleep(1.0)  # the handshakes are tried and refused before the real stream
    frames = make_frames(9)
    stats = publish(frames, rec.endpoint, run="r", metadata=META, keys=keys, send_timeout_s=10)
    movie = rec.join()
    for ctx, sock in intruders:
        sock.close()
        ctx.term()
    assert stats.frames_sent == 9 and movie.complete
    np.testing.assert_array_equal(movie.frames(), frames)
    # the CURVE intruder reached the ZAP handler and was counted; the plain one failed the handshake
    assert movie.attrs["rejected"].get("unauthenticated", 0) >= 1
    assert set(movie.attrs["rejected"]) == {"unauthenticated"}


def test_publisher_without_keys_is_not_heard_by_a_curve_writer(tmp_path):
    from pipeline.acquire import StreamError
    from pipeline.acquire.security import create_keys

    keys = tmp_path / "keys"
    create_keys(keys)
    rec = Recorder(tmp_path / "m.ome.zarr", keys=keys, start_timeout_s=3)
    with pytest.raises(StreamError, match="is gone"):
        publish(make_frames(200, shape=(256, 256)), rec.endpoint, run="r", metadata=META, send_timeout_s=1, hwm=1)
    with pytest.raises(MovieError, match="before any valid frame"):
        rec.join()
    assert not (tmp_path / "m.ome.zarr").exists()


def test_given_metadata_overrides_a_bad_start_key_and_is_checked_itself(tmp_path):
    bad_start = json.dumps({"start": True, "run": "r", "metadata": {**META, "temperature_K": "hot"}}).encode()
    rec = Recorder(tmp_path / "m.ome.zarr", metadata={"temperature_K": 300})
    _send_stream(rec.endpoint, [bad_start] + [frame_parts(i, GOOD[i]) for i in range(4)] + [[wire.encode_end("r", 4, 4)]])
    movie = rec.join()
    assert movie.attrs["rejected"] == {} and movie.attrs["temperature_K"] == 300
    with pytest.raises(ValueError, match="'frame_interval_s'"):
        record("tcp://127.0.0.1:*", tmp_path / "x.ome.zarr", metadata={"frame_interval_s": True})


def test_oversize_message_of_the_sender_shows_as_dropped_frames_and_a_frames_sent_mismatch(tmp_path):
    """Issue 14, finding 8: ZeroMQ drops the connection of a message above
    max_frame_bytes and what was in flight behind it; the writer cannot name
    the message, but records the frames that never arrived and says the end's
    frames_sent disagrees."""
    frames = make_frames(6, shape=(16, 16))
    rec = Recorder(tmp_path / "o.ome.zarr", max_frame_bytes=4096)
    publisher = Publisher(rec.endpoint, run="r")
    publisher.start(META)
    publisher.send(frames[0], 0)
    publisher.send(frames[1], 1)
    time.sleep(0.3)  # delivered before the oversize frame
    # above the socket's limit (max_frame_bytes, or the 1 MiB header cap if larger;
    # a frame between the two is received and rejected as 'shape')
    publisher.send(np.zeros((1024, 1024), np.uint16), 2)
    time.sleep(0.3)  # reconnected
    for i in range(3, 6):
        publisher.send(frames[i], i)
    publisher.end()
    publisher.close()
    movie = rec.join()
    assert movie.complete and movie.attrs["rejected"] == {}
    kept = [i for i in range(6) if i not in movie.attrs["dropped"]]
    assert 2 in movie.attrs["dropped"] and kept[:2] == [0, 1]
    np.testing.assert_array_equal(movie.frames()[kept], frames[kept])
    assert "says 6 frames were sent" in movie.attrs["frames_sent_mismatch"]


def test_trackflow_keys_writes_owner_only_files(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "keys", str(tmp_path / "k")], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    written = [tmp_path / "k" / name for name in ("server.key", "server.key_secret", "client.key", "client.key_secret", "authorized/client.key")]
    assert sorted(out.stdout.split()) == sorted(map(str, written))
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in written)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o700
    again = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "keys", str(tmp_path / "k")], capture_output=True, text=True, timeout=60, check=False
    )
    assert again.returncode == 2 and "exists" in again.stderr
