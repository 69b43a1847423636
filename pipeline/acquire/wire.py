"""The wire format of a frame stream: encode, decode and validate messages.

A stream is a sequence of ZeroMQ multipart messages (architecture.md):

- **frame** (2 parts): a UTF-8 JSON header ``{"seq", "t", "shape", "dtype",
  "run"}`` and the raw C-ordered pixel buffer, sent with ``copy=False``;
- **start** (1 part, optional, first): ``{"start": true, "run", "metadata",
  "frames_expected", "first_seq"}``: the acquisition metadata of the camera;
- **end** (1 part, last): ``{"end": true, "run", "frames_sent", "next_seq"}``:
  a clean end; the stream covered sequence numbers ``first_seq .. next_seq-1``.

``dtype`` is a NumPy type string (``"<u2"``; plain names like ``"uint16"``
are accepted too) restricted to integer and float pixel types, so a header can
never ask for Python objects. Nothing is ever unpickled.

A receiver checks every message before it touches the buffer
(:func:`check_frame`): header JSON, known dtype, sane shape, and
``prod(shape) * itemsize == len(buffer)`` computed on Python integers, with
the frame size capped by ``max_frame_bytes``. Each failure raises
:class:`WireError` carrying a short ``reason`` under which the receiver counts
the rejection.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..io.schema import section_defaults

__all__ = [
    "WireError",
    "FrameHeader",
    "REJECT_REASONS",
    "MAX_FRAME_BYTES",
    "MAX_HEADER_BYTES",
    "encode_frame_header",
    "encode_start",
    "encode_end",
    "decode_header",
    "message_kind",
    "parse_dtype",
    "check_frame",
    "check_end",
]

#: Largest frame accepted (the ``acquire.max_frame_bytes`` default).
MAX_FRAME_BYTES = section_defaults("acquire")["max_frame_bytes"]
MAX_HEADER_BYTES = 1 * 2**20  # metadata of a start message included

# Why a message was rejected (the receiver counts each, by reason).
REJECT_REASONS = (
    "parts",  # wrong number of message parts for its kind
    "header",  # not JSON, not an object, a missing or mistyped key
    "dtype",  # unknown or disallowed pixel type
    "shape",  # not 2D/3D positive integers, or larger than max_frame_bytes
    "size",  # buffer length differs from shape x itemsize
    "format_change",  # shape or dtype differs from the stream's first frame
    "duplicate_seq",  # a sequence number already received
    "out_of_order_seq",  # a sequence number before the last one received
    "seq_jump",  # a gap too large to be a dropped-frame run
    "run",  # a message from another run
    "unexpected",  # a start after frames, or anything after the end
)

# Pixel types a camera or file can deliver; anything else (objects, strings,
# structured or datetime types) is refused.
_ALLOWED_KINDS = {"u": (1, 2, 4, 8), "i": (1, 2, 4, 8), "f": (4, 8)}


class WireError(ValueError):
    """A message that does not follow the wire format; ``reason`` is one of
    :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """A validated frame header."""

    seq: int
    t: float
    shape: tuple[int, ...]
    dtype: np.dtype
    run: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def parse_dtype(value: Any) -> np.dtype:
    """The pixel type named by a header (``"<u2"``, ``"uint16"``, ...).

    Raises :class:`WireError` (reason ``dtype``) for anything but plain
    integer and float types.
    """
    if not isinstance(value, str) or not 0 < len(value) <= 16:
        raise WireError("dtype", f"dtype must be a short string like '<u2', got {value!r}")
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError):
        raise WireError("dtype", f"unknown dtype {value!r}") from None
    if dtype.kind not in _ALLOWED_KINDS or dtype.itemsize not in _ALLOWED_KINDS[dtype.kind]:
        raise WireError("dtype", f"dtype {value!r} is not an integer or float pixel type")
    return dtype


def _dtype_string(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    parse_dtype(dtype.str)  # refuse to send what a receiver would reject
    return dtype.str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def encode_frame_header(seq: int, t: float, shape: Sequence[int], dtype: Any, run: str) -> bytes:
    """The JSON header (part 1) of one frame message."""
    t = float(t)
    header = {
        "seq": int(seq),
        "t": t if math.isfinite(t) else None,
        "shape": [int(s) for s in shape],
        "dtype": _dtype_string(dtype),
        "run": str(run),
    }
    return json.dumps(header, separators=(",", ":")).encode()


def encode_start(
    run: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    frames_expected: int | None = None,
    first_seq: int | None = None,
) -> bytes:
    """The optional first message: the camera's acquisition metadata."""
    from ..io.tables import jsonable  # plain JSON: numpy scalars become Python

    message = {
        "start": True,
        "run": str(run),
        "metadata": jsonable(dict(metadata or {})),
        "frames_expected": None if frames_expected is None else int(frames_expected),
        "first_seq": None if first_seq is None else int(first_seq),
    }
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def encode_end(run: str, frames_sent: int, next_seq: int) -> bytes:
    """The last message of a clean stream."""
    message = {"end": True, "run": str(run), "frames_sent": int(frames_sent), "next_seq": int(next_seq)}
    return json.dumps(message, separators=(",", ":")).encode()


def decode_header(data: bytes | memoryview) -> dict:
    """Parse a JSON header; raises :class:`WireError` (reason ``header``)."""
    if len(data) > MAX_HEADER_BYTES:
        raise WireError("header", f"header of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError("header", f"header is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise WireError("header", f"header must be a JSON object, got {type(header).__name__}")
    return header


def message_kind(header: Mapping[str, Any]) -> str:
    """``"start"``, ``"end"`` or ``"frame"``."""
    if header.get("end") is True:
        return "end"
    if header.get("start") is True:
        return "start"
    return "frame"


def check_frame(
    header: Mapping[str, Any], buffer_length: int, *, max_frame_bytes: int = MAX_FRAME_BYTES
) -> FrameHeader:
    """Validate a decoded frame header against its buffer's length.

    Nothing is allocated: the size check runs on Python integers before any
    array is made over the buffer.
    """
    missing = [k for k in ("seq", "t", "shape", "dtype", "run") if k not in header]
    if missing:
        raise WireError("header", f"frame header lacks {missing}")
    seq, t, shape, run = header["seq"], header["t"], header["shape"], header["run"]
    if not _is_int(seq) or seq < 0:
        raise WireError("header", f"'seq' must be a non-negative integer, got {seq!r}")
    if t is None:
        t = float("nan")
    elif _is_int(t) or isinstance(t, float):
        t = float(t)
    else:
        raise WireError("header", f"'t' must be a number or null, got {t!r}")
    if not isinstance(run, str):
        raise WireError("header", f"'run' must be a string, got {run!r}")
    dtype = parse_dtype(header["dtype"])
    if (
        not isinstance(shape, list)
        or len(shape) not in (2, 3)
        or not all(_is_int(s) and 0 < s <= max_frame_bytes for s in shape)
    ):
        raise WireError("shape", f"'shape' must be 2 or 3 positive integers, got {shape!r}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_frame_bytes:
        raise WireError(
            "shape", f"frame of shape {shape} {dtype} is {nbytes} bytes, above the cap {max_frame_bytes}"
        )
    if nbytes != buffer_length:
        raise WireError(
            "size",
            f"frame {seq}: buffer of {buffer_length} bytes does not match shape {shape} x {dtype} "
            f"({nbytes} bytes)",
        )
    return FrameHeader(seq=seq, t=t, shape=tuple(shape), dtype=dtype, run=run)


def check_end(header: Mapping[str, Any]) -> tuple[int, int]:
    """``(frames_sent, next_seq)`` of an end message."""
    frames_sent, next_seq = header.get("frames_sent"), header.get("next_seq")
    if not (_is_int(frames_sent) and frames_sent >= 0 and _is_int(next_seq) and next_seq >= 0):
        raise WireError(
            "header", f"end message needs non-negative integers 'frames_sent' and 'next_seq', got {dict(header)}"
        )
    return frames_sent, next_seq
