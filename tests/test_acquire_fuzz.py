"""Fuzz the writer: garbage interleaved with a valid stream, at a real writer process.

A seeded generator (reproducible, bounded in count and time) builds
structured garbage (valid headers mutated: huge integers, NaN and infinity,
deep nesting, wrong types, forged sequence numbers and ends, bad start
metadata) and unstructured garbage (random bytes, wrong part counts). Each bad
message is followed by a valid frame, so that the reason it is rejected for
is known in advance (a frame held after a forged gap is settled by the next
frame). The writer must survive, store every valid frame bit-exact and count
exactly the bad messages sent, per reason.
"""

import json
import time
from collections import Counter

import numpy as np
import zmq

from pipeline.acquire import WriterProcess, wire
from pipeline.io.movie import open_movie

META = {"pixel_size_um": 0.2, "frame_interval_s": 0.01, "temperature_K": 293.0}
SHAPE, DTYPE = (16, 16), np.dtype("<u2")
N_VALID = 300
MAX_SEQ_GAP = 100
SEED = 14


def _header(**fields) -> bytes:
    base = {"seq": 0, "t": 0.0, "shape": list(SHAPE), "dtype": DTYPE.str, "run": "fuzz"}
    base.update(fields)
    return json.dumps(base).encode()


def _raw(template: str, value: str) -> bytes:
    """A header with one value written as raw JSON text (what json.dumps cannot make)."""
    return template.replace("@", value).encode()


FRAME_TEMPLATE = '{"seq": @, "t": 0.5, "shape": [16, 16], "dtype": "<u2", "run": "fuzz"}'
T_TEMPLATE = '{"seq": 1, "t": @, "shape": [16, 16], "dtype": "<u2", "run": "fuzz"}'


def bad_message(rng: np.random.Generator, last: int, pixels: bytes) -> tuple[str, list[bytes]]:
    """One bad message for a stream whose last valid frame is ``last``: (reason, parts)."""
    kind = int(rng.integers(22))
    digits = "9" * int(rng.integers(101, 6000))
    if kind == 0:  # random bytes: never a JSON object
        return "header", [b"\xff" + rng.bytes(int(rng.integers(0, 200))), pixels]
    if kind == 1:
        return "header", [b"\xfe" + rng.bytes(int(rng.integers(0, 50)))]
    if kind == 2:  # wrong part counts
        return "parts", [_header(seq=last + 1)] + [pixels] * int(rng.integers(2, 5))
    if kind == 3:
        return "parts", [_header(seq=last + 1)]
    if kind == 4:
        return "parts", [wire.encode_end("fuzz", 1, last + 2), pixels]
    if kind == 5:  # huge integers where numbers go
        return "header", [_raw(T_TEMPLATE, digits), pixels]
    if kind == 6:
        return "header", [_raw(FRAME_TEMPLATE, digits), pixels]
    if kind == 7:  # NaN, infinity, overflow
        return "header", [_raw(T_TEMPLATE, str(rng.choice(["NaN", "Infinity", "-Infinity", "1e999"]))), pixels]
    if kind == 8:  # deep nesting
        depth = int(rng.integers(2_000, 200_000))
        return "header", [b"[" * depth + b"]" * depth, pixels]
    if kind == 9:  # wrong types
        value = rng.choice(["\"1\"", "1.5", "true", "null", "[1]", "{}", "-1", str(2**63)])
        return "header", [_raw(FRAME_TEMPLATE, str(value)), pixels]
    if kind == 10:
        value = [["1", "2"], None, 7, [16, 16, 16, 16], [0, 16], [16.0, 16], [-16, -16]][int(rng.integers(7))]
        return "shape", [_header(seq=last + 1, shape=value), pixels]
    if kind == 11:
        value = ["O", "U4", "c16", "M8[ns]", "V2", "b1", "", "x" * 40, 3][int(rng.integers(9))]
        return "dtype", [_header(seq=last + 1, dtype=value), pixels]
    if kind == 12:  # buffer length
        cut = int(rng.integers(1, len(pixels)))
        return "size", [_header(seq=last + 1), pixels[:-cut] if rng.random() < 0.5 else pixels + b"\0" * cut]
    if kind == 13:
        return "format_change", [_header(seq=last + 1, shape=[8, 32]), pixels]
    if kind == 14:
        return "run", [_header(seq=last + 1, run="intruder"), pixels]
    if kind == 15:  # sequence numbers: repeated, late, forged far or near
        return "duplicate_seq", [_header(seq=last), pixels]
    if kind == 16 and last > 0:
        return "out_of_order_seq", [_header(seq=int(rng.integers(0, last))), pixels]
    if kind == 17:
        return "seq_jump", [_header(seq=last + MAX_SEQ_GAP + 1 + int(rng.integers(0, 10**15))), pixels]
    if kind == 18:  # held after its gap, refuted by the next valid frame
        return "seq_jump", [_header(seq=last + 2 + int(rng.integers(0, MAX_SEQ_GAP - 1))), pixels]
    if kind == 19:  # a forged end beyond reach
        return "seq_jump", [wire.encode_end("fuzz", 0, last + MAX_SEQ_GAP + 2 + int(rng.integers(0, 10**12)))]
    if kind == 20:  # a start after the stream began
        return "unexpected", [wire.encode_start("fuzz", META)]
    return "header", [json.dumps(["not", "an", "object", int(rng.integers(100))]).encode(), pixels]


def bad_start(rng: np.random.Generator) -> bytes:
    """A start message whose metadata no store could take."""
    key, value = [
        ("temperature_K", '"hot"'),
        ("pixel_size_um", "NaN"),
        ("pixel_size_um", "[0.1, -Infinity]"),
        ("frame_interval_s", "true"),
        ("frame_interval_s", "0"),
        ("exposure_s", "-1e-3"),
        ("viscosity_Pa_s", "1e999"),
        ("gain", '{"stage": [1, NaN]}'),
    ][int(rng.integers(8))]
    metadata = json.dumps(META)[:-1] + f', "{key}": {value}}}'
    return f'{{"start": true, "run": "fuzz", "metadata": {metadata}}}'.encode()


def test_fuzzed_stream_at_a_real_writer(tmp_path):
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    frames = rng.integers(0, 2**16, size=(N_VALID, *SHAPE), dtype=DTYPE)
    output = tmp_path / "fuzz.ome.zarr"
    writer = WriterProcess("tcp://127.0.0.1:*", output, timeout_s=20, frames_per_shard=32, max_seq_gap=MAX_SEQ_GAP)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 10_000)
    sock.setsockopt(zmq.SNDHWM, 0)
    expected: Counter[str] = Counter()
    try:
        sock.connect(writer.endpoint)
        for _ in range(20):  # bad starts first: the writer waits for a valid one
            sock.send(bad_start(rng))
            expected["metadata"] += 1
        sock.send(wire.encode_start("fuzz", META, frames_expected=N_VALID))
        for seq in range(N_VALID):
            sock.send_multipart([_header(seq=seq, t=seq * 0.01), frames[seq]])
            for _ in range(int(rng.integers(0, 3))):
                reason, parts = bad_message(rng, seq, frames[seq].tobytes())
                sock.send_multipart(parts)
                expected[reason] += 1
        sock.send(wire.encode_end("fuzz", N_VALID, N_VALID))
        assert writer.wait(60) == 0, "the writer did not survive"
    finally:
        sock.close()
        ctx.term()
        writer.terminate()
    movie = open_movie(output)
    assert movie.complete and len(movie) == N_VALID and movie.attrs["dropped"] == []
    np.testing.assert_array_equal(movie.frames(), frames)
    assert movie.attrs["rejected"] == dict(expected)
    assert sum(expected.values()) > 250 and len(expected) >= 12
    assert movie.attrs["frames_sent_mismatch"] is None
    assert time.perf_counter() - t0 < 30
    print(f"fuzz: {sum(expected.values())} bad messages, rejected {dict(expected)}; {N_VALID} valid frames, 0 lost")
