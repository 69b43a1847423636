"""The wire format: headers encode, decode and validate as architecture.md says."""

import json

import numpy as np
import pytest

from pipeline.acquire import wire


def test_frame_header_round_trip():
    raw = wire.encode_frame_header(7, 1.25, (3, 4), np.uint16, "r1")
    header = json.loads(raw)
    assert set(header) == {"seq", "t", "shape", "dtype", "run"}
    fh = wire.check_frame(wire.decode_header(raw), 3 * 4 * 2)
    assert (fh.seq, fh.t, fh.shape, fh.dtype, fh.run) == (7, 1.25, (3, 4), np.dtype("<u2"), "r1")


def test_nan_timestamp_travels_as_null():
    raw = wire.encode_frame_header(0, float("nan"), (2, 2), "uint8", "r")
    assert json.loads(raw)["t"] is None
    assert np.isnan(wire.check_frame(wire.decode_header(raw), 4).t)


@pytest.mark.parametrize("name", ["uint8", "<u2", ">u2", "int32", "float32", "<f8", "uint16"])
def test_pixel_dtypes_are_accepted(name):
    assert wire.parse_dtype(name) == np.dtype(name)


@pytest.mark.parametrize("name", ["O", "object", "U8", "V16", "M8[ns]", "c16", "bogus", 3, None, "b1"])
def test_other_dtypes_are_refused(name):
    with pytest.raises(wire.WireError) as err:
        wire.parse_dtype(name)
    assert err.value.reason == "dtype"


def test_encoding_refuses_object_arrays():
    with pytest.raises(wire.WireError):
        wire.encode_frame_header(0, 0.0, (2,), object, "r")


def _header(**overrides):
    header = {"seq": 0, "t": 0.0, "shape": [4, 4], "dtype": "<u2", "run": "r"}
    header.update(overrides)
    return header


@pytest.mark.parametrize(
    "overrides, length, reason",
    [
        ({"seq": -1}, 32, "header"),
        ({"seq": True}, 32, "header"),
        ({"seq": 1.5}, 32, "header"),
        ({"t": "now"}, 32, "header"),
        ({"run": 3}, 32, "header"),
        ({"dtype": "O"}, 32, "dtype"),
        ({"shape": [4]}, 8, "shape"),
        ({"shape": [1, 2, 3, 4]}, 48, "shape"),
        ({"shape": [4, 0]}, 0, "shape"),
        ({"shape": "4x4"}, 32, "shape"),
        ({"shape": [4, 4.0]}, 32, "shape"),
        ({}, 31, "size"),
        ({}, 33, "size"),
    ],
)
def test_bad_frame_headers_name_their_reason(overrides, length, reason):
    with pytest.raises(wire.WireError) as err:
        wire.check_frame(_header(**overrides), length)
    assert err.value.reason == reason


def test_missing_key_is_a_header_error():
    header = _header()
    del header["run"]
    with pytest.raises(wire.WireError, match="run") as err:
        wire.check_frame(header, 32)
    assert err.value.reason == "header"


def test_huge_shape_is_refused_by_arithmetic_alone():
    # 10^18 pixels: refused by size, before anything could be allocated
    with pytest.raises(wire.WireError) as err:
        wire.check_frame(_header(shape=[10**9, 10**9]), 32)
    assert err.value.reason == "shape"
    with pytest.raises(wire.WireError) as err:
        wire.check_frame(_header(shape=[1000, 1000]), 2_000_000, max_frame_bytes=1_000_000)
    assert err.value.reason == "shape"


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"x" * (wire.MAX_HEADER_BYTES + 1)])
def test_malformed_headers(raw):
    with pytest.raises(wire.WireError) as err:
        wire.decode_header(raw)
    assert err.value.reason == "header"


def test_control_messages():
    start = wire.decode_header(wire.encode_start("r", {"pixel_size_um": np.float64(0.1)}, frames_expected=5))
    assert wire.message_kind(start) == "start" and start["metadata"] == {"pixel_size_um": 0.1}
    end = wire.decode_header(wire.encode_end("r", 4, 5))
    assert wire.message_kind(end) == "end"
    assert wire.check_end(end) == (4, 5)
    with pytest.raises(wire.WireError):
        wire.check_end({"end": True, "frames_sent": -1, "next_seq": 2})
    assert wire.message_kind(_header()) == "frame"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"seq": 1, "t": %s, "shape": [4, 4], "dtype": "<u2", "run": "r"}' % (b"9" * 400),  # float() overflows
        b'{"seq": 1, "t": %s, "shape": [4, 4], "dtype": "<u2", "run": "r"}' % (b"9" * 5000),  # int-str limit
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in the parser
        b'{"seq": 1, "t": NaN, "shape": [4, 4], "dtype": "<u2", "run": "r"}',
        b'{"seq": 1, "t": -Infinity, "shape": [4, 4], "dtype": "<u2", "run": "r"}',
        b'{"seq": 1, "t": 1e400, "shape": [4, 4], "dtype": "<u2", "run": "r"}',
        b'{"seq": %d, "t": 0, "shape": [4, 4], "dtype": "<u2", "run": "r"}' % 2**64,
        b'{"seq": %d, "t": 0, "shape": [4, 4], "dtype": "<u2", "run": "r"}' % 2**63,
    ],
    ids=["t_400_digits", "t_5000_digits", "nested_100000", "t_nan", "t_inf", "t_overflows", "seq_2_64", "seq_2_63"],
)
def test_hostile_headers_are_rejected_not_raised(raw):
    """Issue 14, finding 1: each of these killed the writer with a traceback."""
    with pytest.raises(wire.WireError) as err:
        wire.check_frame(wire.decode_header(raw), 32)
    assert err.value.reason == "header"


def test_largest_int64_seq_is_accepted():
    fh = wire.check_frame(_header(seq=2**63 - 1), 32)
    assert fh.seq == 2**63 - 1
    with pytest.raises(wire.WireError):
        wire.check_end({"end": True, "frames_sent": 0, "next_seq": 2**63})


@pytest.mark.parametrize(
    "metadata, key",
    [
        ({"temperature_K": "hot"}, "temperature_K"),
        ({"pixel_size_um": float("nan")}, "pixel_size_um"),
        ({"pixel_size_um": float("inf")}, "pixel_size_um"),
        ({"pixel_size_um": [0.1, -0.1]}, "pixel_size_um"),
        ({"pixel_size_um": [0.1] * 4}, "pixel_size_um"),
        ({"pixel_size_um": []}, "pixel_size_um"),
        ({"pixel_size_um": "0.1"}, "pixel_size_um"),
        ({"frame_interval_s": True}, "frame_interval_s"),
        ({"frame_interval_s": 0}, "frame_interval_s"),
        ({"exposure_s": -1}, "exposure_s"),
        ({"viscosity_Pa_s": float("inf")}, "viscosity_Pa_s"),
        ({"gain": {"stage": [1, float("nan")]}}, "gain.stage[1]"),
    ],
)
def test_bad_metadata_names_its_key(metadata, key):
    with pytest.raises(wire.WireError, match=f"'{key}'".replace("[", r"\[").replace(".", r"\.")) as err:
        wire.check_metadata({"pixel_size_um": 0.1, "frame_interval_s": 0.01, **metadata})
    assert err.value.reason == "metadata"


def test_good_metadata_passes():
    good = {"pixel_size_um": [0.5, np.float32(0.1), 0.1], "frame_interval_s": 0.01, "temperature_K": 295,
            "exposure_s": None, "source": "cam", "gain": 2}
    assert wire.check_metadata(good) == good
    assert wire.check_metadata({}) == {}
    with pytest.raises(wire.WireError):
        wire.check_metadata([1, 2])
