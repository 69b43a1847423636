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

A header is hostile input: its size is capped before it is parsed, integers
of more than 100 digits are refused while parsing (so neither ``float()`` nor
Python's int-string limit can fail later), nesting too deep for the parser is
a rejection, not a crash, and sequence numbers must fit in an int64. JSON's
non-standard ``NaN``/``Infinity`` and floats that overflow parse as
non-finite floats, so that the check of the key holding one can name it:
``t`` must be finite (or null), and :func:`check_metadata` refuses any
non-finite number in a start message's metadata.
"""

from __future__ import annotations

import json
import math
import numbers
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
    "check_metadata",
    "MAX_SEQ",
]

#: Largest frame accepted (the ``acquire.max_frame_bytes`` default).
MAX_FRAME_BYTES = section_defaults("acquire")["max_frame_bytes"]
MAX_HEADER_BYTES = 1 * 2**20  # metadata of a start message included
#: Largest sequence number (the store lists dropped ones as int64).
MAX_SEQ = 2**63 - 1
# Longest integer literal a header may hold: a 128-bit seed in a start
# message's metadata has 39 digits; float() overflows from 309 and json
# refuses more than 4,300 (Python's int-string limit), so longer ones are
# refused before Python converts them.
_MAX_INT_DIGITS = 100

# Why a message was rejected (the receiver counts each, by reason).
REJECT_REASONS = (
    "parts",  # wrong number of message parts for its kind
    "header",  # not JSON, not an object, a missing or mistyped key
    "metadata",  # a start message whose acquisition metadata is unusable
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


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise WireError("header", f"integer of {len(text)} digits in the header")
    return int(text)


def decode_header(data: bytes | memoryview) -> dict:
    """Parse a JSON header.

    Parameters
    ----------
    data : bytes or memoryview
        The message part, at most :data:`MAX_HEADER_BYTES`.

    Returns
    -------
    dict
        The header; every integer in it has at most 100 digits (floats may
        be non-finite: the checks of their keys refuse them).

    Raises
    ------
    WireError
        Reason ``header``: too long, not UTF-8 JSON, an integer of more than
        100 digits, nested too deep, or not a JSON object.
    """
    if len(data) > MAX_HEADER_BYTES:
        raise WireError("header", f"header of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(data).decode("utf-8"), parse_int=_parse_int)
    except WireError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise WireError("header", f"header is not UTF-8 JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise WireError("header", "header JSON is nested too deep to parse") from None
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
    if not _is_int(seq) or not 0 <= seq <= MAX_SEQ:
        raise WireError("header", f"'seq' must be a non-negative int64, got {_short(seq)}")
    if t is None:
        t = float("nan")
    elif _is_int(t) or isinstance(t, float):
        t = float(t)  # a checked header's integers have at most 100 digits: no overflow
        if not math.isfinite(t):
            raise WireError("header", f"'t' must be finite or null, got {t!r}")
    else:
        raise WireError("header", f"'t' must be a number or null, got {_short(t)}")
    if not isinstance(run, str):
        raise WireError("header", f"'run' must be a string, got {_short(run)}")
    dtype = parse_dtype(header["dtype"])
    if (
        not isinstance(shape, list)
        or len(shape) not in (2, 3)
        or not all(_is_int(s) and 0 < s <= max_frame_bytes for s in shape)
    ):
        raise WireError("shape", f"'shape' must be 2 or 3 positive integers, got {_short(shape)}")
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
    """``(frames_sent, next_seq)`` of an end message, both non-negative int64."""
    frames_sent, next_seq = header.get("frames_sent"), header.get("next_seq")
    if not all(_is_int(v) and 0 <= v <= MAX_SEQ for v in (frames_sent, next_seq)):
        raise WireError(
            "header",
            f"end message needs non-negative int64 'frames_sent' and 'next_seq', got "
            f"{_short(frames_sent)} and {_short(next_seq)}",
        )
    return frames_sent, next_seq


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut short: a rejection is logged, and a header may be 1 MiB."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# Metadata keys with a physical meaning: each a positive finite number (the
# scale keys required at the first frame, the others optional).
_POSITIVE_KEYS = ("frame_interval_s", "exposure_s", "temperature_K", "viscosity_Pa_s")


def _positive(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)  # numpy scalars too, from a Python caller
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
        and value > 0
    )


def check_metadata(metadata: Any, where: str = "start message") -> dict:
    """Check acquisition metadata before a store is made from it.

    Parameters
    ----------
    metadata : mapping
        ``pixel_size_um`` (a positive finite number, or one per axis: 1 to 3
        of them), ``frame_interval_s``, ``exposure_s``, ``temperature_K``,
        ``viscosity_Pa_s`` (positive finite numbers, not booleans); each may
        be absent or null here (the scale keys are required when the first
        frame arrives). Other keys are kept as given.
    where : str
        Names the source of the metadata in the error.

    Returns
    -------
    dict
        A copy of ``metadata``.

    Raises
    ------
    WireError
        Reason ``metadata``, naming the key and its value.
    """
    if not isinstance(metadata, Mapping):
        raise WireError("metadata", f"{where}: 'metadata' must be an object, got {type(metadata).__name__}")
    for key in _POSITIVE_KEYS:
        value = metadata.get(key)
        if value is not None and not _positive(value):
            raise WireError("metadata", f"{where}: '{key}' must be a positive finite number, got {_short(value)}")
    pixel = metadata.get("pixel_size_um")
    if pixel is not None:
        values = list(pixel) if isinstance(pixel, (list, tuple)) else [pixel]
        if not 1 <= len(values) <= 3 or not all(_positive(v) for v in values):
            raise WireError(
                "metadata",
                f"{where}: 'pixel_size_um' must be a positive finite number or a list of 1 to 3 of them "
                f"(one per axis), got {_short(pixel)}",
            )
    # the other keys are stored as given: JSON has no NaN or infinity
    todo: list[tuple[str, Any]] = list(metadata.items())
    while todo:  # not recursive: a parsed header may nest as deep as the parser allowed
        key, value = todo.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise WireError("metadata", f"{where}: '{key}' holds {value!r}, which JSON cannot store")
        if isinstance(value, Mapping):
            todo.extend((f"{key}.{k}", v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            todo.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
    return dict(metadata)
